// Package recipes holds the SlipStream deployment scripts of an application with CNSMO and the
// application definition that declares every parameter they use. They are embedded so that the
// end-to-end tests and the demo run exactly these files on the simulated VMs.
package recipes

import (
	"embed"

	"github.com/cnsmo/cnsmo/mocknuvla"
)

// FS holds the recipes (*.sh), the application definition (application.json), and the Nuvla 2
// compose files (nuvla2/*.yml).
//
//go:embed *.sh application.json nuvla2/*.yml
var FS embed.FS

// Application returns the application definition (application.json) as a deployment of the mock,
// ready to adjust (multiplicities, values) before a run is created from it.
func Application() (*mocknuvla.Deployment, error) {
	b, err := FS.ReadFile("application.json")
	if err != nil {
		return nil, err
	}
	return mocknuvla.ParseDeployment(b)
}
