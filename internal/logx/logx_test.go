package logx

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFormatsAndLevels(t *testing.T) {
	var b bytes.Buffer
	l, err := New(&b, "auto", "info") // a buffer is no terminal: JSON
	require.NoError(t, err)
	l.Debug().Msg("hidden")
	l.Info().Str("instance", "web.1").Msg("shown")
	var m map[string]any
	require.NoError(t, json.Unmarshal(b.Bytes(), &m))
	require.Equal(t, "shown", m["message"])
	require.Equal(t, "web.1", m["instance"])

	b.Reset()
	l, err = New(&b, "console", "debug")
	require.NoError(t, err)
	l.Debug().Msg("human")
	require.Contains(t, b.String(), "human")
	require.NotContains(t, b.String(), "{")

	_, err = New(&b, "xml", "info")
	require.ErrorContains(t, err, "--log-format")
	_, err = New(&b, "json", "loud")
	require.ErrorContains(t, err, "--log-level")
}
