package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cnsmo/cnsmo/backend/nuvla2"
	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/recipes"
	"github.com/cnsmo/cnsmo/testbed"
)

// Nuvla2 reports whether the deployment runs on mocknuvla's Nuvla 2 API.
func (d *Deployment) Nuvla2() bool { return d.cfg.API == "nuvla2" }

// startGroup creates the deployment group: one member deployment per instance of the definition.
func (d *Deployment) startGroup() error {
	g, err := d.Mock.CreateGroup(d.cfg.Definition, !d.cfg.NoUserRights)
	if err != nil {
		return fmt.Errorf("deploy: create group: %w", err)
	}
	d.group = g
	for _, m := range g.Members {
		d.members[m.Name] = m
		if m.Name == d.ServerNode()+".1" {
			d.hub = m.Deployment
		}
	}
	// The person (cnsmo-role join) is the user who started the group, with an API key of their own.
	owner := "user/mocknuvla"
	if d.cfg.Definition.Username != "" {
		owner = "user/" + d.cfg.Definition.Username
	}
	d.personKey, d.personPW = d.Mock.AddNuvla2UserKey(owner)
	// The functions' owner is the hub's uuid, as cnsmo-role names the run on Nuvla 2.
	d.Run = &mocknuvla.RunInfo{UUID: strings.TrimPrefix(d.hub, "deployment/")}
	d.progress("mocknuvla (Nuvla 2 API) on %s, group %s, CNSMO server deployment %s", d.URL, g.ID, d.hub)
	return nil
}

// Member returns the member deployment of a definition instance name (web.1).
func (d *Deployment) Member(instance string) (mocknuvla.Nuvla2Member, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, ok := d.members[instance]
	return m, ok
}

// MemberName is the name a member gives itself (web.6b1f2c3a) for a definition instance name.
func (d *Deployment) MemberName(instance string) string {
	m, ok := d.Member(instance)
	if !ok {
		return instance
	}
	return nuvla2.MemberName(m.Node, m.Deployment)
}

// memberParam reads "instance:key" under the hub ("ss:key" is the hub's own value).
func (d *Deployment) memberParam(key string) string {
	inst, k, _ := strings.Cut(key, ":")
	node := d.MemberName(inst)
	switch {
	case inst == "ss" && k == "abort":
		node, k = "", nuvla2.KeyAbort
	case inst == "ss":
		node = ""
	case k == params.Statecustom:
		m, _ := d.Member(inst)
		v, _ := d.Mock.Nuvla2Param(m.Deployment, "", nuvla2.KeyProgress)
		return v
	}
	v, _ := d.Mock.Nuvla2Param(d.hub, node, k)
	return v
}

// placeMember writes the member's environment into its VM, as its compose file forwards it: the
// NUVLA_* variables, CNSMO_NODE, and its inputs from the definition's values; Nuvla writes the
// deployment's hostname parameter.
func (d *Deployment) placeMember(ctx context.Context, instance string, vm *testbed.VM) error {
	m, ok := d.Member(instance)
	if !ok {
		node, _, _ := strings.Cut(instance, ".")
		var err error
		if m, err = d.Mock.AddMember(d.group.ID, node); err != nil {
			return fmt.Errorf("deploy: add a member of %s: %w", node, err)
		}
		if m.Name != instance {
			return fmt.Errorf("deploy: the group's next member of %s is %s, not %s", node, m.Name, instance)
		}
		d.mu.Lock()
		d.members[instance] = m
		d.mu.Unlock()
	}
	d.Mock.SetNuvla2Param(m.Deployment, "", params.Hostname, vm.PublicAddr)
	env := d.MemberEnv(m)
	env["CNSMO_DRIVER"], env["CNSMO_STATE_DIR"] = d.cfg.Driver, StateDir
	var b strings.Builder
	for k, v := range env {
		fmt.Fprintf(&b, "export %s='%s'\n", k, strings.ReplaceAll(v, "'", `'\''`))
	}
	if err := vm.WriteFile(ctx, EnvFile, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("deploy: environment of %s: %w", instance, err)
	}
	d.mu.Lock()
	d.place[instance] = vm
	d.mu.Unlock()
	return nil
}

// launchMember starts the member's cnsmo-role: from its compose file, or as a process of its VM
// (as its container would run it): server or agent.
func (d *Deployment) launchMember(ctx context.Context, instance string, vm *testbed.VM) error {
	roleName := "agent"
	if node, _, _ := strings.Cut(instance, "."); node == d.ServerNode() {
		roleName = "server"
	}
	if d.cfg.Compose {
		if out, err := d.compose(ctx, instance, "up", "-d", "cnsmo"); err != nil {
			return fmt.Errorf("deploy: docker-compose up of %s: %w: %s", instance, err, lastLines(out, 5))
		}
		d.progress("%s (%s): cnsmo-role %s started from its compose file in VM %s's network (%s)", instance, d.MemberName(instance), roleName, vm.Name, vm.PublicAddr)
		return nil
	}
	cmd := ". " + EnvFile + "; mkdir -p " + StateDir + "; exec /opt/cnsmo/bin/cnsmo-role " + roleName + " >>" + StateDir + "/role.log 2>&1"
	if _, err := vm.Start(ctx, nil, "sh", "-c", cmd); err != nil {
		return fmt.Errorf("deploy: start cnsmo-role %s on %s: %w", roleName, instance, err)
	}
	d.progress("%s (%s): cnsmo-role %s started on VM %s (%s)", instance, d.MemberName(instance), roleName, vm.Name, vm.PublicAddr)
	return nil
}

// StopMember stops a member as Nuvla does: its deployment goes STOPPING, then its container's
// role is stopped (SIGTERM); the role says goodbye and removes what it created.
func (d *Deployment) StopMember(ctx context.Context, instance string) error {
	m, ok := d.Member(instance)
	vm := d.VMOf(instance)
	if !ok || vm == nil {
		return fmt.Errorf("deploy: %s is not a placed member", instance)
	}
	if err := d.Mock.SetDeploymentState(m.Deployment, "STOPPING"); err != nil {
		return err
	}
	if d.cfg.Compose {
		if out, err := d.compose(ctx, instance, "down", "-v", "--timeout", "20"); err != nil {
			return fmt.Errorf("deploy: docker-compose down of %s: %w: %s", instance, err, lastLines(out, 5))
		}
	} else if _, errOut, err := vm.Exec(ctx, "/opt/cnsmo/bin/cnsmo-role", "stop", "--state-dir", StateDir, "--timeout", "20s"); err != nil {
		return fmt.Errorf("deploy: stop %s: %w: %s", instance, err, errOut)
	}
	return d.Mock.SetDeploymentState(m.Deployment, "STOPPED")
}

// stopMembers stops the group: every member's deployment goes STOPPING (the hub's too: every role
// sees the abort), then every member's role is stopped.
func (d *Deployment) stopMembers(ctx context.Context) error {
	for _, in := range d.Instances() { // a group's stop: every member's deployment is stopping at once
		m, _ := d.Member(in)
		if err := d.Mock.SetDeploymentState(m.Deployment, "STOPPING"); err != nil {
			return err
		}
	}
	var errs []error
	for _, in := range d.Instances() {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := d.StopMember(sctx, in); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	return errors.Join(errs...)
}

// MemberEnv is what a member's compose file hands its cnsmo-role container: the NUVLA_* variables,
// CNSMO_NODE, and the member's inputs from the definition's values (CNSMO_FW_RULES, CNSMO_SERVICES…).
func (d *Deployment) MemberEnv(m mocknuvla.Nuvla2Member) map[string]string {
	env := map[string]string{}
	for _, kv := range d.group.Nuvla2Env(d.URL, m) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	for _, n := range d.cfg.Definition.Nodes {
		if n.Name != m.Node {
			continue
		}
		for _, p := range n.Parameters {
			for _, in := range nuvla2.Inputs {
				if in.Param == p.Name && p.Value != "" {
					env[in.Env] = p.Value
				}
			}
		}
	}
	return env
}

// PlaceFromCompose places a member whose cnsmo-role runs from its compose file (started by the
// caller with the environment returned): Nuvla writes its hostname, nothing goes into the VM.
func (d *Deployment) PlaceFromCompose(instance, vmName string) (map[string]string, error) {
	vm := d.TB.VM(vmName)
	m, ok := d.Member(instance)
	if vm == nil || !ok {
		return nil, fmt.Errorf("deploy: no VM %q or member %q", vmName, instance)
	}
	d.Mock.SetNuvla2Param(m.Deployment, "", params.Hostname, vm.PublicAddr)
	d.mu.Lock()
	d.place[instance] = vm
	d.mu.Unlock()
	return d.MemberEnv(m), nil
}

// composeFile is the member's compose file of recipes/nuvla2 (the server's or an application
// member's), written once on the host.
func (d *Deployment) composeFile(instance string) (string, error) {
	name := "app-member.yml"
	if node, _, _ := strings.Cut(instance, "."); node == d.ServerNode() {
		name = "cnsmo-server.yml"
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.composeDir == "" {
		dir, err := os.MkdirTemp("", "cnsmo-compose-")
		if err != nil {
			return "", err
		}
		d.composeDir = dir
	}
	path := filepath.Join(d.composeDir, name)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	b, err := recipes.FS.ReadFile("nuvla2/" + name)
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, b, 0o600)
}

// compose runs docker-compose for a member's project (named after the testbed and the instance),
// with the member's environment, its VM's network and the role image.
func (d *Deployment) compose(ctx context.Context, instance string, args ...string) (string, error) {
	file, err := d.composeFile(instance)
	if err != nil {
		return "", err
	}
	vm := d.VMOf(instance)
	m, ok := d.Member(instance)
	if vm == nil || !ok {
		return "", fmt.Errorf("deploy: %s is not a placed member", instance)
	}
	env := d.MemberEnv(m)
	env["CNSMO_NETWORK_MODE"] = "container:" + vm.Container
	env["CNSMO_DOCKER_NETWORK"] = "container:" + vm.Container
	env["CNSMO_DRIVER"] = d.cfg.Driver
	env["CNSMO_IMAGE"] = "cnsmo/role:latest"
	// User-space WireGuard's control sockets: the role container mounts the directory its VM
	// shares with its functions (the VM container's volume at /run/wireguard).
	wg, err := vm.WireGuardRunDirOnHost(ctx)
	if err != nil {
		return "", err
	}
	env["CNSMO_WG_RUN_DIR"] = wg
	hosts, err := vm.HostsFileOnHost(ctx)
	if err != nil {
		return "", err
	}
	env["CNSMO_HOSTS_FILE_ON_HOST"] = hosts
	cmd := exec.CommandContext(ctx, "docker-compose", append([]string{"-f", file, "-p", d.project(instance)}, args...)...)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// project is a member's compose project: the testbed's prefix (its leftovers are the testbed's
// to clean) and the instance.
func (d *Deployment) project(instance string) string {
	return d.TB.Prefix() + strings.ReplaceAll(instance, ".", "")
}

// closeCompose removes every member started from its compose file, its state volume included.
func (d *Deployment) closeCompose(ctx context.Context) {
	if !d.Nuvla2() || !d.cfg.Compose {
		return
	}
	for _, in := range d.Instances() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		_, _ = d.compose(cctx, in, "down", "-v", "--timeout", "20")
		cancel()
	}
	if d.composeDir != "" {
		_ = os.RemoveAll(d.composeDir)
	}
}
