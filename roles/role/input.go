package role

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxValueLen is the longest value a parameter holds (SlipStream refuses longer ones; cnsmo keeps
// the same limit on every backend).
const MaxValueLen = 4096

// InputError is invalid user input, in the one form every service uses:
// "<param><field>: <what is wrong>", e.g. `lb.port: 70000 is out of range 1-65535` or
// `net.i2cat.cnsmo.service.fw.rules[3].dst_port: 70000 is out of range 1-65535`. The orchestrator
// puts the instance in front when it aborts the run.
type InputError struct {
	Param string // the parameter
	Field string // where in its value ("[3].dst_port"), "" for the whole value
	Msg   string // what is wrong, with the value
}

func (e *InputError) Error() string { return e.Param + e.Field + ": " + e.Msg }

// Invalid returns an *InputError for param (field may be "").
func Invalid(param, field, format string, args ...any) error {
	return &InputError{Param: param, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Port parses a TCP or UDP port from 1 to 65535 (surrounding space ignored). Its error says what
// is wrong with the value, for the caller's InputError.
func Port(v string) (int, error) {
	v = strings.TrimSpace(v)
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a port number", v)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("%d is out of range 1-65535", n)
	}
	return n, nil
}

// ParsePort parses param's value as a port; the error is an *InputError naming param.
func ParsePort(param, v string) (int, error) {
	n, err := Port(v)
	if err != nil {
		return 0, &InputError{Param: param, Msg: err.Error()}
	}
	return n, nil
}
