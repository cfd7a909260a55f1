package orchestrator

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cnsmo/cnsmo/params"
)

// Known services, in the order they are reconciled: the VPN first, so that the firewall and the
// load balancer can use overlay addresses.
var Known = []string{"vpn", "fw", "lb"}

// ParseServices validates net.services.enable: a JSON list of service names (a comma-separated
// list is accepted too). It returns them in reconcile order, without duplicates.
func ParseServices(v string) ([]string, error) {
	v = strings.TrimSpace(v)
	var names []string
	switch {
	case v == "":
		return nil, fmt.Errorf("%s: is not set (a JSON list such as [\"vpn\",\"fw\",\"lb\"])", params.ServicesEnable)
	case strings.HasPrefix(v, `"`):
		return nil, fmt.Errorf(`%s: the value must be a JSON list such as ["vpn","fw","lb"], not the string %s`, params.ServicesEnable, v)
	case strings.HasPrefix(v, "["):
		if err := json.Unmarshal([]byte(v), &names); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				return nil, fmt.Errorf("%s: not a JSON list of service names: found a %s where a name goes", params.ServicesEnable, te.Value)
			}
			return nil, fmt.Errorf("%s: not a JSON list of service names: %v", params.ServicesEnable, err)
		}
	default:
		names = strings.Split(v, ",")
	}
	seen := map[string]bool{}
	for i, n := range names {
		n = strings.ToLower(strings.TrimSpace(n))
		if !slices.Contains(Known, n) {
			return nil, fmt.Errorf("%s[%d]: unknown service %q (known: %s)", params.ServicesEnable, i, n, strings.Join(Known, ", "))
		}
		seen[n] = true
	}
	var out []string
	for _, k := range Known {
		if seen[k] {
			out = append(out, k)
		}
	}
	return out, nil
}
