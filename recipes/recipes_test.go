package recipes

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

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
		if !standard[s.Name] {
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
