package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/benchreport"
)

func TestTablePairsFiguresWithBaselines(t *testing.T) {
	results := map[string]float64{"fw_apply_ms": 8, "fw_apply_per_rule_ms": 3200, "solo_ms": 1.5}
	pairs := map[string]benchreport.Pair{"fw_apply_ms": {Baseline: "fw_apply_per_rule_ms", Note: "n"}, "solo_ms": {}}
	tab := Table(results, pairs)
	require.Contains(t, tab, "| `fw_apply_ms` | 8 | `fw_apply_per_rule_ms` | 3200 | 0.0025 | n |")
	require.Contains(t, tab, "| `solo_ms` | 1.5 |")
	require.NotContains(t, tab, "\n| `fw_apply_per_rule_ms` |", "a baseline gets no row of its own")
	require.Equal(t, 4, strings.Count(tab, "\n"))
}
