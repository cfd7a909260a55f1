package recipes

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/backend/nuvla2"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/params"
)

type appDef struct {
	Nodes []struct {
		Name       string `json:"name"`
		Parameters []struct {
			Name    string `json:"name"`
			Mapping string `json:"mapping"`
		} `json:"parameters"`
	} `json:"nodes"`
}

// Every parameter cnsmo uses must be declared in the application definition (SlipStream answers
// 404 and aborts the run for an undeclared one) and documented in the README's table.
func TestEveryParameterIsDeclaredAndDocumented(t *testing.T) {
	b, err := FS.ReadFile("application.json")
	require.NoError(t, err)
	var def appDef
	require.NoError(t, json.Unmarshal(b, &def))
	declared := map[string]bool{}
	for _, n := range def.Nodes {
		for _, p := range n.Parameters {
			declared[p.Name] = true
		}
	}
	standard := map[string]bool{params.URLService: true, params.SSURLService: true}
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	for _, s := range params.Table {
		if strings.Contains(s.Name, "<i>") { // the people's slots
			for i := 1; i <= params.UserSlots; i++ {
				n := strings.Replace(s.Name, "<i>", fmt.Sprint(i), 1)
				require.Truef(t, declared[n], "%s is not declared in recipes/application.json", n)
			}
		} else if !standard[s.Name] {
			require.Truef(t, declared[s.Name], "%s is not declared in recipes/application.json", s.Name)
		}
		require.Truef(t, strings.Contains(string(readme), s.Row()+"\n"), "the README's parameter table lacks this row (or has it different):\n%s", s.Row())
	}
}

func TestRecipesAreEmbedded(t *testing.T) {
	for _, f := range []string{"lib.sh", "cnsmo-server.sh", "app-node.sh", "onvmadd.sh", "onvmremove.sh", "onstop.sh"} {
		_, err := FS.ReadFile(f)
		require.NoError(t, err, f)
	}
}

// The unit the recipes write is one systemd accepts (`systemd-analyze verify`, no warning), runs
// the role with the recipe's context from a 0600 environment file, restarts it after a crash but
// not after a clean stop, a usage error or an aborted run.
func TestUnitFileVerifies(t *testing.T) {
	testutil.RequireBinary(t, "sh", "systemd-analyze")
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	require.NoError(t, os.MkdirAll(bin, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(bin, "cnsmo-role"), []byte("#!/bin/sh\nexit 0\n"), 0o755))
	lib, err := filepath.Abs("lib.sh")
	require.NoError(t, err)
	cmd := exec.Command("sh", "-c", `. "$1" && cnsmo_unit agent`, "sh", lib)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "CNSMO_BIN_DIR=" + bin, "CNSMO_STATE_DIR=" + filepath.Join(dir, "state"),
		"CNSMO_UNIT_DIR=" + filepath.Join(dir, "units"), "SLIPSTREAM_DIID=0b6f3a8e", "SLIPSTREAM_API_SECRET=s3cret", "OTHER=x",
		"SLIPSTREAM_ODD=it's", "HOME=" + dir}
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	unit := filepath.Join(dir, "units", "cnsmo-role.service")
	vout, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	require.NoError(t, err, "%s", vout)
	require.Empty(t, strings.TrimSpace(string(vout)), "systemd-analyze verify warns")
	b, err := os.ReadFile(unit)
	require.NoError(t, err)
	for _, want := range []string{"ExecStart=" + bin + "/cnsmo-role agent --state-dir " + filepath.Join(dir, "state"),
		"Restart=on-failure", "RestartPreventExitStatus=2 6 7 8", "WantedBy=multi-user.target"} {
		require.Contains(t, string(b), want+"\n")
	}
	envFile := filepath.Join(dir, "state", "role.env")
	st, err := os.Stat(envFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	env, err := os.ReadFile(envFile)
	require.NoError(t, err)
	require.Contains(t, string(env), "SLIPSTREAM_DIID='0b6f3a8e'\n")
	require.NotContains(t, string(env), "OTHER")
	require.Contains(t, string(env), "HOME='"+dir+"'\n")
	require.NotContains(t, string(env), "SLIPSTREAM_ODD", "a value the file cannot hold safely is left out")
	require.Contains(t, string(out), "SLIPSTREAM_ODD not written")
}

// The Nuvla 2 compose files are accepted by docker-compose (Debian's), forward the NUVLA_*
// variables, and give cnsmo-role only what it needs: the capabilities and the tun device, no
// privileged mode; the group's example names both applications.
func TestNuvla2ComposeFiles(t *testing.T) {
	testutil.RequireBinary(t, "docker-compose")
	env := append(os.Environ(), "NUVLA_ENDPOINT=https://nuvla.io", "NUVLA_DEPLOYMENT_ID=deployment/6b1f2c3a-0000-4000-8000-000000000001",
		"NUVLA_DEPLOYMENT_GROUP_ID=deployment-set/9c2a", "NUVLA_API_KEY=credential/k", "NUVLA_API_SECRET=s3cr3t")
	for file, cmdWant := range map[string]string{"nuvla2/cnsmo-server.yml": "server", "nuvla2/app-member.yml": "agent"} {
		cmd := exec.Command("docker-compose", "-f", file, "config")
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s: %s", file, out)
		cfg := string(out)
		for _, want := range []string{"NUVLA_ENDPOINT: https://nuvla.io", "NUVLA_API_KEY: credential/k", "NUVLA_API_SECRET: s3cr3t",
			"NUVLA_DEPLOYMENT_ID: deployment/6b1f2c3a", "NUVLA_DEPLOYMENT_GROUP_ID: deployment-set/9c2a",
			"- NET_ADMIN", "- NET_RAW", "/dev/net/tun:/dev/net/tun", "network_mode: host", "/var/run/docker.sock:/var/run/docker.sock",
			"- " + cmdWant} {
			require.Contains(t, cfg, want, "%s", file)
		}
		require.NotContains(t, cfg, "privileged", file)
	}
	ex, err := os.ReadFile("nuvla2/application-set.example.yml")
	require.NoError(t, err)
	require.Contains(t, string(ex), "CNSMO_FW_RULES")
	require.Contains(t, string(ex), "requires-user-rights")
}

// Every input of the Nuvla 2 convention reaches cnsmo-role: the compose file of its component
// forwards the variable to the container.
func TestComposeFilesForwardEveryInput(t *testing.T) {
	for _, in := range nuvla2.Inputs {
		file := "nuvla2/app-member.yml"
		if in.Server {
			file = "nuvla2/cnsmo-server.yml"
		}
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		require.Contains(t, string(b), "      "+in.Env+": ${"+in.Env+":-", "%s does not forward %s (%s)", file, in.Env, in.Param)
	}
}
