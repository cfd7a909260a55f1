package mocknuvla

import (
	"fmt"
	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"os"
	"path/filepath"
	"strings"
)

// Env returns the SLIPSTREAM_* variables of instance ("KEY=value"), as a VM of the run gets
// them: SLIPSTREAM_DIID, SLIPSTREAM_SERVICEURL, SLIPSTREAM_NODE_INSTANCE_NAME,
// SLIPSTREAM_API_KEY, SLIPSTREAM_API_SECRET, SLIPSTREAM_USERNAME. Instances created later by a
// scale up are found too. It returns nil for an unknown instance.
func (ri *RunInfo) Env(serviceURL, instance string) []string {
	in, ok := ri.instance(instance)
	if !ok {
		return nil
	}
	return []string{
		"SLIPSTREAM_DIID=" + ri.UUID,
		"SLIPSTREAM_SERVICEURL=" + serviceURL,
		"SLIPSTREAM_NODE_INSTANCE_NAME=" + in.Name,
		"SLIPSTREAM_API_KEY=" + in.APIKey,
		"SLIPSTREAM_API_SECRET=" + in.APISecret,
		"SLIPSTREAM_USERNAME=" + ri.Username,
	}
}

func (ri *RunInfo) instance(name string) (InstanceInfo, bool) {
	for _, l := range [][]InstanceInfo{ri.Instances, ri.Orchestrators} {
		for _, in := range l {
			if in.Name == name {
				return in, true
			}
		}
	}
	if ri.srv != nil {
		if in, err := ri.srv.Instance(ri.UUID, name); err == nil {
			return in, true
		}
	}
	return InstanceInfo{}, false
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// EnvFile renders the sourceable file of an instance: one `export KEY='value'` per line.
func (ri *RunInfo) EnvFile(serviceURL, instance string) (string, error) {
	env := ri.Env(serviceURL, instance)
	if env == nil {
		return "", fmt.Errorf("run %s has no instance %q", ri.UUID, instance)
	}
	var b strings.Builder
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v))
	}
	return b.String(), nil
}

// ContextFile renders the slipstream.context INI file of an instance.
func (ri *RunInfo) ContextFile(serviceURL, instance string) (string, error) {
	in, ok := ri.instance(instance)
	if !ok {
		return "", fmt.Errorf("run %s has no instance %q", ri.UUID, instance)
	}
	return fmt.Sprintf("[contextualization]\ndiid = %s\nserviceurl = %s\nnode_instance_name = %s\napi_key = %s\napi_secret = %s\nusername = %s\n",
		ri.UUID, serviceURL, in.Name, in.APIKey, in.APISecret, ri.Username), nil
}

// WriteEnvDir writes, for every application instance of ri, DIR/<node>.<i>.env (sourceable)
// and DIR/<node>.<i>/slipstream.context. Files are 0600 (they hold the API secret), written
// atomically.
func WriteEnvDir(dir, serviceURL string, ri *RunInfo) error {
	return WriteEnvFiles(dir, serviceURL, ri, ri.Instances)
}

// WriteEnvFiles writes the files of the given instances only (e.g. the ones a scale up created).
func WriteEnvFiles(dir, serviceURL string, ri *RunInfo, instances []InstanceInfo) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("env dir: %w", err)
	}
	for _, in := range instances {
		env, err := ri.EnvFile(serviceURL, in.Name)
		if err != nil {
			return fmt.Errorf("env dir: %w", err)
		}
		if err := atomicfile.Write(filepath.Join(dir, in.Name+".env"), []byte(env), 0o600); err != nil {
			return err
		}
		ctx, err := ri.ContextFile(serviceURL, in.Name)
		if err != nil {
			return fmt.Errorf("env dir: %w", err)
		}
		sub := filepath.Join(dir, in.Name)
		if err := os.MkdirAll(sub, 0o700); err != nil {
			return fmt.Errorf("env dir: %w", err)
		}
		if err := atomicfile.Write(filepath.Join(sub, "slipstream.context"), []byte(ctx), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// Nuvla2Env is what a member's compose file forwards to its cnsmo-role container: the NUVLA_*
// variables Nuvla offers, and the member's node (CNSMO_NODE, an application variable).
func (g *Nuvla2Group) Nuvla2Env(serviceURL string, m Nuvla2Member) []string {
	return []string{"NUVLA_ENDPOINT=" + serviceURL, "NUVLA_DEPLOYMENT_ID=" + m.Deployment, "NUVLA_API_KEY=" + m.APIKey,
		"NUVLA_API_SECRET=" + m.APISecret, "NUVLA_DEPLOYMENT_GROUP_ID=" + g.ID, "CNSMO_NODE=" + m.Node}
}

// WriteNuvla2EnvDir writes DIR/<member>.env for the given members of g (sourceable; 0600: it holds
// the API secret).
func WriteNuvla2EnvDir(dir, serviceURL string, g *Nuvla2Group, members []Nuvla2Member) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("env dir: %w", err)
	}
	for _, m := range members {
		var b strings.Builder
		for _, kv := range g.Nuvla2Env(serviceURL, m) {
			k, v, _ := strings.Cut(kv, "=")
			fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v))
		}
		if err := atomicfile.Write(filepath.Join(dir, m.Name+".env"), []byte(b.String()), 0o600); err != nil {
			return err
		}
	}
	return nil
}
