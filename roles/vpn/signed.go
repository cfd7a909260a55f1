package vpn

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/cnsmo/cnsmo/roles/role"
)

// A signed line is one parameter value of public data: "<magic> k1=v1 … kn=vn sig=<base64>", the
// Ed25519 signature covering everything before " sig=". Entries, rosters and people's requests
// are such lines; each parser checks its fields and that the body is its canonical rendering.

// splitSigned splits v into its body, the values of names (in that order, each once and
// non-empty) and the raw signature (not verified: see verifySigned).
func splitSigned(v, magic string, names ...string) (body string, vals map[string]string, sig []byte, err error) {
	if len(v) > role.MaxValueLen {
		return "", nil, nil, fmt.Errorf("%d characters", len(v))
	}
	body, s, ok := strings.Cut(v, " sig=")
	if !ok {
		return "", nil, nil, fmt.Errorf("no signature")
	}
	f := strings.Split(body, " ")
	if len(f) != len(names)+1 || f[0] != magic {
		return "", nil, nil, fmt.Errorf("not %s with %d fields", magic, len(names))
	}
	vals = make(map[string]string, len(names))
	for i, n := range names {
		k, val, ok := strings.Cut(f[i+1], "=")
		if !ok || k != n || val == "" {
			return "", nil, nil, fmt.Errorf("field %d is not %s=…", i+1, n)
		}
		vals[k] = val
	}
	if sig, err = base64.StdEncoding.DecodeString(s); err != nil || len(sig) != ed25519.SignatureSize {
		return "", nil, nil, fmt.Errorf("signature encoding")
	}
	return body, vals, sig, nil
}

// verifySigned reports whether sig is key's signature of body.
func verifySigned(key ed25519.PublicKey, body string, sig []byte) bool {
	return len(key) == ed25519.PublicKeySize && ed25519.Verify(key, []byte(body), sig)
}

// sign renders body signed with key.
func sign(body string, key ed25519.PrivateKey) string {
	return body + " sig=" + base64.StdEncoding.EncodeToString(ed25519.Sign(key, []byte(body)))
}
