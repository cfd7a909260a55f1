// Package images holds the Dockerfiles of cnsmo's network functions and the offline base image
// (images/build.sh); this test checks that every function image starts and its binary answers.
package images

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/dockerdriver"
	"github.com/cnsmo/cnsmo/internal/testutil"
)

func TestFunctionImagesAnswer(t *testing.T) {
	testutil.RequireDocker(t)
	d, err := dockerdriver.New(driver.Owner{Run: "image-test", Instance: "host"}, dockerdriver.WithNetwork("none"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	defer d.Cleanup(context.Background()) //nolint:errcheck
	for _, c := range []struct {
		image string
		cmd   []string
		want  string
	}{
		{"cnsmo/openvpn:latest", []string{"openvpn", "--version"}, "OpenVPN 2.6"},
		{"cnsmo/fw:latest", []string{"iptables-restore", "--version"}, "nf_tables"},
		{"cnsmo/fw:latest", []string{"ip6tables-restore", "--version"}, "nf_tables"},
		{"cnsmo/haproxy:latest", []string{"haproxy", "-v"}, "HAProxy version 2.6"},
		{"cnsmo/vm:latest", []string{"sh", "-c", "for t in ip iptables curl socat tcpdump iperf3 openvpn haproxy ping nc; do command -v $t >/dev/null || echo missing $t; done; echo tools-ok"}, "tools-ok"},
	} {
		t.Run(c.image+" "+c.cmd[0], func(t *testing.T) {
			testutil.RequireImage(t, c.image)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			res, err := d.Run(ctx, driver.Spec{Name: "answer", Image: c.image, Cmd: c.cmd}, nil)
			if err != nil {
				t.Fatal(err)
			}
			out := string(res.Stdout) + string(res.Stderr)
			if res.ExitCode != 0 || !strings.Contains(out, c.want) || strings.Contains(out, "missing") {
				t.Fatalf("%v in %s: exit %d, output %q, want %q", c.cmd, c.image, res.ExitCode, out, c.want)
			}
		})
	}
}
