package ssclient

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Config is what the client needs to reach the run: read from the slipstream.context file and
// the SLIPSTREAM_* variables (which win), as the reference tools do.
type Config struct {
	ServiceURL   string // serviceurl / SLIPSTREAM_SERVICEURL
	RunUUID      string // diid / SLIPSTREAM_DIID
	NodeInstance string // node_instance_name / SLIPSTREAM_NODE_INSTANCE_NAME
	Username     string // username / SLIPSTREAM_USERNAME
	Password     string // SLIPSTREAM_PASSWORD (internal login; the context file has none)
	APIKey       string // api_key / SLIPSTREAM_API_KEY
	APISecret    string // api_secret / SLIPSTREAM_API_SECRET
	CacheKey     string // ss_cache_key / SLIPSTREAM_SS_CACHE_KEY
	ContextFile  string // the file read, if any (for messages)
}

// ContextFileName is the reference client's context file.
const ContextFileName = "slipstream.context"

// ContextSearchPath is the reference order: cwd, home, the client's bin and sbin, the temp dir.
func ContextSearchPath() []string {
	var dirs []string
	if wd, err := os.Getwd(); err == nil {
		dirs = append(dirs, wd)
	}
	if h, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, h)
	}
	dirs = append(dirs, "/opt/slipstream/client/bin", "/opt/slipstream/client/sbin", os.TempDir())
	return dirs
}

// LoadConfig reads the first slipstream.context on the search path, then applies SLIPSTREAM_*.
func LoadConfig() (Config, error) {
	return LoadConfigFrom(ContextSearchPath(), os.Getenv)
}

// LoadConfigFrom is LoadConfig with an explicit search path and environment.
func LoadConfigFrom(dirs []string, getenv func(string) string) (Config, error) {
	var c Config
	for _, d := range dirs {
		p := filepath.Join(d, ContextFileName)
		kv, err := readINI(p, "contextualization")
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return Config{}, err
		}
		c = Config{ServiceURL: kv["serviceurl"], RunUUID: kv["diid"], NodeInstance: kv["node_instance_name"],
			Username: kv["username"], APIKey: kv["api_key"], APISecret: kv["api_secret"],
			CacheKey: kv["ss_cache_key"], ContextFile: p}
		break
	}
	for env, dst := range map[string]*string{
		"SLIPSTREAM_SERVICEURL": &c.ServiceURL, "SLIPSTREAM_DIID": &c.RunUUID,
		"SLIPSTREAM_NODE_INSTANCE_NAME": &c.NodeInstance, "SLIPSTREAM_USERNAME": &c.Username,
		"SLIPSTREAM_PASSWORD": &c.Password, "SLIPSTREAM_API_KEY": &c.APIKey,
		"SLIPSTREAM_API_SECRET": &c.APISecret, "SLIPSTREAM_SS_CACHE_KEY": &c.CacheKey,
	} {
		if v := getenv(env); v != "" {
			*dst = v
		}
	}
	return c, c.Validate()
}

// Validate names what is missing.
func (c Config) Validate() error {
	var missing []string
	if c.ServiceURL == "" {
		missing = append(missing, "serviceurl (SLIPSTREAM_SERVICEURL)")
	}
	if c.RunUUID == "" {
		missing = append(missing, "diid (SLIPSTREAM_DIID)")
	}
	if c.NodeInstance == "" {
		missing = append(missing, "node_instance_name (SLIPSTREAM_NODE_INSTANCE_NAME)")
	}
	if len(missing) > 0 {
		where := "no " + ContextFileName + " found"
		if c.ContextFile != "" {
			where = "context " + c.ContextFile
		}
		return fmt.Errorf("ssclient: configuration incomplete (%s): missing %s", where, strings.Join(missing, ", "))
	}
	if !strings.HasPrefix(c.ServiceURL, "http://") && !strings.HasPrefix(c.ServiceURL, "https://") {
		return fmt.Errorf("ssclient: serviceurl %q is not an http(s) URL", c.ServiceURL)
	}
	return nil
}

func readINI(path, section string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	cur := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			cur = strings.TrimSpace(l[1 : len(l)-1])
		case cur == section:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				k, v, ok = strings.Cut(l, ":")
			}
			if !ok {
				return nil, fmt.Errorf("%s:%d: not key = value", path, n)
			}
			out[strings.TrimSpace(strings.ToLower(k))] = strings.TrimSpace(v)
		}
	}
	return out, sc.Err()
}

// Qualify turns a key as given to ss-get/ss-set into the key the server knows, exactly as the
// reference tools: no ':' -> "<me>:key" (but multiplicity and ids -> "<node>:key"); "node:key"
// without an index -> "node.1:key"; ss:, orchestrator* and machine: prefixes are untouched.
func Qualify(me, key string) string {
	prefix, rest, ok := strings.Cut(key, ":")
	if !ok {
		if key == "multiplicity" || key == "ids" {
			node, _, _ := strings.Cut(me, ".")
			return node + ":" + key
		}
		return me + ":" + key
	}
	if prefix == "ss" || prefix == "machine" || strings.HasPrefix(prefix, "orchestrator") || strings.Contains(prefix, ".") {
		return key
	}
	if rest == "multiplicity" || rest == "ids" {
		return key
	}
	return prefix + ".1:" + rest
}
