package ssclient

import (
	"encoding/xml"
	"testing"

	"github.com/stretchr/testify/require"
)

// The whole-run XML as SlipStream writes it: entities, an unset parameter, an empty value, the key
// only in <string>, whitespace between elements.
func TestParseRunXML(t *testing.T) {
	doc := `<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<run uuid="d0c5" name="app" state="Executing" mutable="true">
  <runtimeParameters>
    <entry><string>web.1:fw.rules</string><runtimeParameter key="web.1:fw.rules" isSet="true" group="web.1">[{"a":"&lt;&amp;&gt;"}]</runtimeParameter></entry>
    <entry><string>web.1:vpn.address</string><runtimeParameter key="web.1:vpn.address" isSet="false" group="web.1"></runtimeParameter></entry>
    <entry><string>ss:groups</string><runtimeParameter isSet="true">cloud-a:web</runtimeParameter></entry>
    <entry><string>web.1:pem</string><runtimeParameter key="web.1:pem" isSet="true">-----BEGIN X-----
line&#10;two
-----END X-----</runtimeParameter></entry>
  </runtimeParameters>
</run>`
	r, err := ParseRunXML([]byte(doc))
	require.NoError(t, err)
	require.Equal(t, "d0c5", r.UUID)
	require.Equal(t, "Executing", r.State)
	require.Equal(t, Param{Value: `[{"a":"<&>"}]`, IsSet: true}, r.Params["web.1:fw.rules"])
	require.Equal(t, Param{}, r.Params["web.1:vpn.address"])
	require.Equal(t, Param{Value: "cloud-a:web", IsSet: true}, r.Params["ss:groups"], "the key from <string>")
	require.Equal(t, "-----BEGIN X-----\nline\ntwo\n-----END X-----", r.Params["web.1:pem"].Value)
	require.Len(t, r.Params, 4)

	for _, bad := range []string{"", "garbage", "<run uuid='x'><runtimeParameters>", `<run><entry><runtimeParameter key="a">v</entry>`, "<run>&bogus;</run>"} {
		_, err := ParseRunXML([]byte(bad))
		require.Error(t, err, "%q", bad)
	}
}

// reflectRun is the run as encoding/xml's reflection reads it (the parser's reference).
type reflectRun struct {
	UUID    string `xml:"uuid,attr"`
	Entries []struct {
		Key   string `xml:"string"`
		Param struct {
			Key   string `xml:"key,attr"`
			IsSet string `xml:"isSet,attr"`
			Value string `xml:",chardata"`
		} `xml:"runtimeParameter"`
	} `xml:"runtimeParameters>entry"`
}

// Whatever the bytes, the parser returns a run or an error without panicking; on a well-formed
// run document it agrees with encoding/xml's reflection.
func FuzzParseRunXML(f *testing.F) {
	f.Add(`<run uuid="u"><runtimeParameters><entry><string>a:b</string><runtimeParameter key="a:b" isSet="true">v</runtimeParameter></entry></runtimeParameters></run>`)
	f.Add(`<run><runtimeParameters><entry><string>k</string><runtimeParameter isSet="false">&amp;</runtimeParameter></entry></runtimeParameters></run>`)
	f.Fuzz(func(t *testing.T, doc string) {
		r, err := ParseRunXML([]byte(doc))
		var ref reflectRun
		if err != nil || xml.Unmarshal([]byte(doc), &ref) != nil || len(ref.Entries) == 0 {
			return
		}
		for _, e := range ref.Entries {
			k := e.Param.Key
			if k == "" {
				k = e.Key
			}
			if k == "" {
				return // an entry without a key: nothing to compare
			}
			if got := r.Params[k]; got.Value != e.Param.Value {
				t.Fatalf("%q: %q, encoding/xml says %q", k, got.Value, e.Param.Value)
			}
		}
	})
}
