package mocknuvla

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxValueLen is the longest value (in characters) the server stores.
const MaxValueLen = 4096

// maxMultiplicity bounds a node's instance count (at creation and per scale action), so a typo
// cannot make the mock allocate millions of parameters.
const maxMultiplicity = 1000

// Deployment is the application definition a run is created from (the deployment file).
// See docs/mocknuvla.md for the file format.
type Deployment struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Mutable runs can be scaled (and stay in Ready when every instance completes).
	Mutable bool `json:"mutable"`
	// State is the run's initial state; empty means Ready (the VMs are up, recipes may run).
	State string `json:"state,omitempty"`
	// Username is the owner of the run, given to every instance as SLIPSTREAM_USERNAME
	// (default "mocknuvla").
	Username string `json:"username,omitempty"`
	// Tags is the initial value of ss:tags.
	Tags  string `json:"tags,omitempty"`
	Nodes []Node `json:"nodes"`
}

// Node is one application component: its instances are <name>.1 .. <name>.<multiplicity>.
type Node struct {
	Name  string `json:"name"`
	Cloud string `json:"cloud"`
	// Multiplicity is the initial number of instances (default 1 when absent from the file).
	Multiplicity int         `json:"multiplicity"`
	Parameters   []Parameter `json:"parameters,omitempty"`
}

// Parameter is a declared parameter of every instance of a node.
type Parameter struct {
	Name string `json:"name"`
	// Value is the initial value (a default or an input value); empty means not set.
	Value       string `json:"value,omitempty"`
	Description string `json:"description,omitempty"`
	// Mapping binds this input to another node's output: "node:param" (= node.1:param) or
	// "node.N:param". Every set of the source is copied here.
	Mapping string `json:"mapping,omitempty"`
}

// UnmarshalJSON makes an absent multiplicity mean 1 and rejects unknown fields.
func (n *Node) UnmarshalJSON(b []byte) error {
	type plain struct {
		Name         string      `json:"name"`
		Cloud        string      `json:"cloud"`
		Multiplicity *int        `json:"multiplicity"`
		Parameters   []Parameter `json:"parameters"`
	}
	var p plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return err
	}
	*n = Node{Name: p.Name, Cloud: p.Cloud, Multiplicity: 1, Parameters: p.Parameters}
	if p.Multiplicity != nil {
		n.Multiplicity = *p.Multiplicity
	}
	return nil
}

// UnmarshalJSON rejects unknown fields (a typo such as "maping" must not pass silently).
func (p *Parameter) UnmarshalJSON(b []byte) error {
	type plain Parameter
	var q plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&q); err != nil {
		return err
	}
	*p = Parameter(q)
	return nil
}

// Standard parameter names the server creates for every run, node and instance.
var (
	globalParams   = []string{"ss:category", "ss:complete", "ss:abort", "ss:state", "ss:groups", "ss:url.service", "ss:tags", "ss:recovery.mode"}
	instanceParams = []string{"statecustom", "vmstate", "abort", "complete", "url.ssh", "url.service", "is.orchestrator", "scale.state", "nodename", "id", "cloudservice", "hostname", "instanceid"}
	nodeParams     = []string{"ids", "multiplicity"}
	// managedParams are standard instance parameters the server owns: a deployment may not declare them.
	managedParams = map[string]bool{"abort": true, "complete": true, "scale.state": true, "nodename": true, "id": true, "is.orchestrator": true, "ids": true, "multiplicity": true}
)

func isStandardInstanceParam(name string) bool {
	for _, p := range instanceParams {
		if p == name {
			return true
		}
	}
	return false
}

var (
	nodeNameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)
	cloudNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	paramNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.\-]*$`)
)

// ParseDeployment decodes and validates a deployment file. Errors name the node, parameter and
// field at fault, e.g. `nodes[1] "web": parameters[0] "x": mapping "db:y": node "db" does not exist`.
func ParseDeployment(data []byte) (*Deployment, error) {
	var d Deployment
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		if where := locate(data); where != nil {
			return nil, fmt.Errorf("deployment: %w", where)
		}
		return nil, fmt.Errorf("deployment: decode JSON: %s", jsonProblem(err))
	}
	if dec.More() {
		return nil, errors.New("deployment: trailing data after the JSON object")
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// locate decodes the nodes and parameters one by one to name the node and parameter whose
// field is unknown or of the wrong type; nil when the fault is elsewhere.
func locate(data []byte) error {
	var top struct {
		Nodes []json.RawMessage `json:"nodes"`
	}
	if json.Unmarshal(data, &top) != nil {
		return nil
	}
	strict := func(b []byte, v any) error {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		return dec.Decode(v)
	}
	for i, raw := range top.Nodes {
		var probe struct {
			Name       string            `json:"name"`
			Parameters []json.RawMessage `json:"parameters"`
		}
		_ = json.Unmarshal(raw, &probe)
		for j, praw := range probe.Parameters {
			var pp struct {
				Name string `json:"name"`
			}
			_ = json.Unmarshal(praw, &pp)
			var p Parameter
			if err := strict(praw, &p); err != nil {
				return fmt.Errorf("nodes[%d] %q: parameters[%d] %q: %s", i, probe.Name, j, pp.Name, jsonProblem(err))
			}
		}
		var n Node
		if err := strict(raw, &n); err != nil {
			return fmt.Errorf("nodes[%d] %q: %s", i, probe.Name, jsonProblem(err))
		}
	}
	return nil
}

// jsonProblem says what is wrong in JSON terms, without Go type names.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		want := map[string]string{"int": "number", "string": "string", "bool": "boolean", "slice": "list",
			"map": "object", "struct": "object", "ptr": "number"}[te.Type.Kind().String()]
		if want == "" {
			want = "value of another type"
		}
		article := func(w string) string {
			if strings.IndexByte("aeiou", w[0]) >= 0 {
				return "an " + w
			}
			return "a " + w
		}
		if te.Field == "" {
			return fmt.Sprintf("%s where %s goes", article(te.Value), article(want))
		}
		field := te.Field
		if k := strings.LastIndex(field, "."); k >= 0 {
			field = field[k+1:]
		}
		return fmt.Sprintf("%s: %s where %s goes", field, article(te.Value), article(want))
	}
	msg := err.Error()
	return strings.TrimPrefix(msg, "json: ")
}

// LoadDeployment reads and validates a deployment file.
func LoadDeployment(path string) (*Deployment, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("deployment: %w", err)
	}
	d, err := ParseDeployment(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// Validate checks the whole definition; the error names what is wrong and where.
func (d *Deployment) Validate() error {
	if d.State != "" && !validState(d.State) {
		return fmt.Errorf("deployment: state %q is not one of %s", d.State, strings.Join(allStates, ", "))
	}
	if d.Username != "" && strings.ContainsAny(d.Username, " \t\r\n'\"") {
		return fmt.Errorf("deployment: username %q contains whitespace or quotes", d.Username)
	}
	if n := utf8.RuneCountInString(d.Tags); n > MaxValueLen {
		return fmt.Errorf("deployment: tags: %d characters, more than %d", n, MaxValueLen)
	}
	if len(d.Nodes) == 0 {
		return errors.New("deployment: nodes: at least one node is needed")
	}
	byName := map[string]*Node{}
	for i := range d.Nodes {
		n := &d.Nodes[i]
		where := fmt.Sprintf("deployment: nodes[%d] %q", i, n.Name)
		switch {
		case n.Name == "":
			return fmt.Errorf("deployment: nodes[%d]: name is empty", i)
		case !nodeNameRE.MatchString(n.Name):
			return fmt.Errorf("%s: name: only letters, digits, '_' and '-' are allowed (no '.', ':' or ',')", where)
		case n.Name == "ss" || strings.HasPrefix(n.Name, "orchestrator") || n.Name == "machine":
			return fmt.Errorf("%s: name: %q is reserved", where, n.Name)
		case byName[n.Name] != nil:
			return fmt.Errorf("%s: duplicate node name", where)
		case n.Cloud == "":
			return fmt.Errorf("%s: cloud is empty", where)
		case !cloudNameRE.MatchString(n.Cloud):
			return fmt.Errorf("%s: cloud %q: only letters, digits, '_', '.' and '-' are allowed", where, n.Cloud)
		case n.Multiplicity < 0:
			return fmt.Errorf("%s: multiplicity %d is negative", where, n.Multiplicity)
		case n.Multiplicity > maxMultiplicity:
			return fmt.Errorf("%s: multiplicity %d is more than %d", where, n.Multiplicity, maxMultiplicity)
		}
		byName[n.Name] = n
		seen := map[string]bool{}
		for j, p := range n.Parameters {
			pw := fmt.Sprintf("%s: parameters[%d] %q", where, j, p.Name)
			switch {
			case p.Name == "":
				return fmt.Errorf("%s: parameters[%d]: name is empty", where, j)
			case !paramNameRE.MatchString(p.Name):
				return fmt.Errorf("%s: name: only letters, digits, '_', '.' and '-' are allowed (no ':' or spaces)", pw)
			case managedParams[p.Name]:
				return fmt.Errorf("%s: name: %q is a standard parameter managed by the server and cannot be declared", pw, p.Name)
			case seen[p.Name]:
				return fmt.Errorf("%s: duplicate parameter in node %q", pw, n.Name)
			}
			seen[p.Name] = true
			if c := utf8.RuneCountInString(p.Value); c > MaxValueLen {
				return fmt.Errorf("%s: value: %d characters, more than %d", pw, c, MaxValueLen)
			}
		}
	}
	// Mappings, once every node is known.
	for i := range d.Nodes {
		n := &d.Nodes[i]
		for j, p := range n.Parameters {
			if p.Mapping == "" {
				continue
			}
			pw := fmt.Sprintf("deployment: nodes[%d] %q: parameters[%d] %q: mapping %q", i, n.Name, j, p.Name, p.Mapping)
			srcNode, idx, srcParam, err := parseMapping(p.Mapping)
			if err != nil {
				return fmt.Errorf("%s: %w", pw, err)
			}
			sn := byName[srcNode]
			if sn == nil {
				return fmt.Errorf("%s: node %q does not exist", pw, srcNode)
			}
			if !sn.declares(srcParam) && !isStandardInstanceParam(srcParam) {
				return fmt.Errorf("%s: parameter %q is not declared in node %q", pw, srcParam, srcNode)
			}
			if idx > sn.Multiplicity {
				return fmt.Errorf("%s: instance %s.%d does not exist (multiplicity %d)", pw, srcNode, idx, sn.Multiplicity)
			}
			if srcNode == n.Name && srcParam == p.Name {
				return fmt.Errorf("%s: a parameter cannot map to itself", pw)
			}
		}
	}
	return nil
}

func (n *Node) declares(param string) bool {
	for _, p := range n.Parameters {
		if p.Name == param {
			return true
		}
	}
	return false
}

// parseMapping splits "node:param" (index 1) or "node.N:param".
func parseMapping(m string) (node string, index int, param string, err error) {
	left, param, ok := strings.Cut(m, ":")
	if !ok || left == "" || param == "" {
		return "", 0, "", errors.New(`want "node:param" or "node.N:param"`)
	}
	node, index = left, 1
	if base, num, dotted := strings.Cut(left, "."); dotted {
		i, err := strconv.Atoi(num)
		if err != nil || i < 1 {
			return "", 0, "", fmt.Errorf("instance index %q is not a positive integer", num)
		}
		node, index = base, i
	}
	return node, index, param, nil
}

// SetValue overrides the initial value of a parameter declared in node (before CreateRun).
// A standard instance parameter that may be declared (hostname, url.service, ...) is added.
func (d *Deployment) SetValue(node, param, value string) error {
	if c := utf8.RuneCountInString(value); c > MaxValueLen {
		return fmt.Errorf("deployment: %s:%s: value has %d characters, more than %d", node, param, c, MaxValueLen)
	}
	for i := range d.Nodes {
		n := &d.Nodes[i]
		if n.Name != node {
			continue
		}
		for j := range n.Parameters {
			if n.Parameters[j].Name == param {
				n.Parameters[j].Value = value
				return nil
			}
		}
		if isStandardInstanceParam(param) && !managedParams[param] {
			n.Parameters = append(n.Parameters, Parameter{Name: param, Value: value})
			return nil
		}
		return fmt.Errorf("deployment: node %q does not declare parameter %q", node, param)
	}
	return fmt.Errorf("deployment: no node %q", node)
}

// clone returns a deep copy, so a run never shares slices with its caller's Deployment.
func (d *Deployment) clone() *Deployment {
	c := *d
	c.Nodes = make([]Node, len(d.Nodes))
	for i, n := range d.Nodes {
		n.Parameters = append([]Parameter(nil), n.Parameters...)
		c.Nodes[i] = n
	}
	return &c
}
