package driver

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"regexp"
	"strings"
)

// Hash identifies a spec: two specs with the same hash run the same function the same way, so
// Start can leave a running function alone.
func Hash(s Spec) string {
	type file struct {
		Path string
		Mode uint32
		Sum  [32]byte
	}
	v := struct {
		Image, Service string
		Cmd, Env       []string
		CapAdd, Devs   []string
		Files          []file
		Shared         []string `json:",omitempty"`
	}{s.Image, s.Service, s.Cmd, s.Env, s.CapAdd, s.Devices, nil, s.Shared}
	for _, f := range s.Files {
		v.Files = append(v.Files, file{f.Path, uint32(f.Mode), sha256.Sum256(f.Data)})
	}
	b, _ := json.Marshal(v)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// SafeName turns parts into a name usable for a container or a directory.
func SafeName(parts ...string) string {
	for i, p := range parts {
		parts[i] = strings.Trim(unsafeName.ReplaceAllString(p, "_"), "._-")
	}
	return strings.Join(parts, "-")
}
