// Package probe reports what this host supports for CNSMO's network functions and tests: a
// reachable Docker engine, NET_ADMIN and /dev/net/tun inside a container, the iptables backend
// on the host and in the firewall image (they must match within one namespace), IPv6, and the
// tun device. `cnsmo-role doctor` prints it; tests skip with its reasons.
package probe

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/docker/docker/client"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/dockerdriver"
)

// Check is one capability.
type Check struct {
	Name   string
	OK     bool
	Detail string // what was found, or why it is missing
}

// Report is every check, in order.
type Report []Check

// Images used by the checks.
var (
	FunctionImage = "cnsmo/openvpn:latest"
	FirewallImage = "cnsmo/fw:latest"
)

// Probe runs every check (about a second with Docker).
func Probe(ctx context.Context) Report {
	var r Report
	add := func(name string, ok bool, format string, args ...any) {
		r = append(r, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	_, err := os.Stat("/dev/net/tun")
	add("tun", err == nil, "%s", orErr("/dev/net/tun present", err))
	b, err := os.ReadFile("/proc/net/if_inet6")
	add("ipv6", err == nil && len(b) > 0, "%s", orErr("IPv6 enabled (/proc/net/if_inet6)", err))
	hostBackend, err := backend(ctx, "iptables", "--version")
	add("iptables-host", err == nil, "%s", orErr(hostBackend, err))

	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		var v string
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		sv, perr := cli.ServerVersion(pctx)
		cancel()
		cli.Close()
		err = perr
		v = sv.Version
		add("docker", err == nil, "%s", orErr("engine "+v+", API "+sv.APIVersion, err))
	} else {
		add("docker", false, "%v", err)
	}
	if err != nil {
		for _, n := range []string{"container-net-admin", "container-tun", "iptables-image"} {
			add(n, false, "needs the Docker engine")
		}
		return r
	}
	d, err := dockerdriver.New(driver.Owner{Run: "probe", Instance: fmt.Sprint(os.Getpid())}, dockerdriver.WithNetwork("none"))
	if err != nil {
		add("container-net-admin", false, "%v", err)
		return r
	}
	defer d.Close()
	defer d.Cleanup(context.WithoutCancel(ctx)) //nolint:errcheck
	res, err := d.Run(ctx, driver.Spec{Name: "netadmin", Image: FunctionImage, CapAdd: []string{"NET_ADMIN"},
		Cmd: []string{"ip", "link", "add", "cnsmo-probe", "type", "bridge"}}, nil)
	add("container-net-admin", err == nil && res.ExitCode == 0, "%s", runDetail("NET_ADMIN works in a container ("+FunctionImage+")", res, err))
	res, err = d.Run(ctx, driver.Spec{Name: "tun", Image: FunctionImage, CapAdd: []string{"NET_ADMIN"}, Devices: []string{"/dev/net/tun"},
		Cmd: []string{"openvpn", "--mktun", "--dev", "cnsmo-probe", "--dev-type", "tun"}}, nil)
	add("container-tun", err == nil && res.ExitCode == 0, "%s", runDetail("/dev/net/tun usable in a container (openvpn --mktun)", res, err))
	res, err = d.Run(ctx, driver.Spec{Name: "iptables", Image: FirewallImage, Cmd: []string{"iptables", "--version"}}, nil)
	imgBackend := strings.TrimSpace(string(res.Stdout))
	match := err == nil && res.ExitCode == 0 && kind(imgBackend) == kind(hostBackend)
	add("iptables-image", match, "%s", runDetail(fmt.Sprintf("%s in %s; host: %s", imgBackend, FirewallImage, hostBackend), res, err))
	return r
}

func orErr(ok string, err error) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

func runDetail(ok string, res driver.Result, err error) string {
	if err != nil {
		return err.Error()
	}
	if res.ExitCode != 0 {
		return fmt.Sprintf("exit %d: %s", res.ExitCode, strings.TrimSpace(string(res.Stderr)))
	}
	return ok
}

func backend(ctx context.Context, argv ...string) (string, error) {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// kind is "nf_tables" or "legacy" from `iptables --version`.
func kind(version string) string {
	switch {
	case strings.Contains(version, "nf_tables"):
		return "nf_tables"
	case strings.Contains(version, "legacy"):
		return "legacy"
	}
	return version
}

// Get returns the named check.
func (r Report) Get(name string) (Check, bool) {
	for _, c := range r {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

// OK reports whether every check passed.
func (r Report) OK() bool {
	for _, c := range r {
		if !c.OK {
			return false
		}
	}
	return true
}

// Print writes the report, one line per check.
func (r Report) Print(w io.Writer) {
	for _, c := range r {
		mark := "ok  "
		if !c.OK {
			mark = "MISS"
		}
		fmt.Fprintf(w, "%s %-20s %s\n", mark, c.Name, c.Detail)
	}
}
