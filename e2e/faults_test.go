package e2e

import (
	"time"

	"github.com/cnsmo/cnsmo/mocknuvla"
)

func faults() mocknuvla.Faults {
	return mocknuvla.Faults{Error5xxRatio: 0.2, Latency: 200 * time.Millisecond, DropRatio: 0.05}
}

func noFaults() mocknuvla.Faults { return mocknuvla.Faults{} }
