package mocknuvla

import (
	"fmt"
	"strings"
	"unicode"
)

// A CIMI filter, the subset of Nuvla's grammar the mock serves: comparisons joined by `and` and
// `or`, with parentheses; operators = != ^= < <= > >=; values in '…' or "…" (no escapes),
// `null` (the attribute is missing), and lists ['a','b'] (any of them, with = only).
// Attributes are looked up in a map; a missing attribute equals only null.
type cimiFilter func(attrs map[string]string) bool

// parseCIMI parses a filter; the error says where it stopped (Nuvla answers 400 then).
func parseCIMI(src string) (cimiFilter, error) {
	p := &cimiParser{src: src}
	f, err := p.or()
	if err != nil {
		return nil, err
	}
	p.space()
	if p.pos != len(p.src) {
		return nil, fmt.Errorf("Invalid CIMI filter. unexpected %q at character %d", p.src[p.pos:], p.pos)
	}
	return f, nil
}

type cimiParser struct {
	src string
	pos int
}

func (p *cimiParser) space() {
	for p.pos < len(p.src) && unicode.IsSpace(rune(p.src[p.pos])) {
		p.pos++
	}
}

// word consumes kw (and, or) when it stands as a word at the current position.
func (p *cimiParser) word(kw string) bool {
	p.space()
	if !strings.HasPrefix(p.src[p.pos:], kw) {
		return false
	}
	end := p.pos + len(kw)
	if end < len(p.src) && !unicode.IsSpace(rune(p.src[end])) && p.src[end] != '(' {
		return false
	}
	p.pos = end
	return true
}

func (p *cimiParser) or() (cimiFilter, error) {
	left, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.word("or") {
		right, err := p.and()
		if err != nil {
			return nil, err
		}
		l := left
		left = func(a map[string]string) bool { return l(a) || right(a) }
	}
	return left, nil
}

func (p *cimiParser) and() (cimiFilter, error) {
	left, err := p.factor()
	if err != nil {
		return nil, err
	}
	for p.word("and") {
		right, err := p.factor()
		if err != nil {
			return nil, err
		}
		l := left
		left = func(a map[string]string) bool { return l(a) && right(a) }
	}
	return left, nil
}

func (p *cimiParser) factor() (cimiFilter, error) {
	p.space()
	if p.pos < len(p.src) && p.src[p.pos] == '(' {
		p.pos++
		f, err := p.or()
		if err != nil {
			return nil, err
		}
		p.space()
		if p.pos >= len(p.src) || p.src[p.pos] != ')' {
			return nil, fmt.Errorf("Invalid CIMI filter. missing ) at character %d", p.pos)
		}
		p.pos++
		return f, nil
	}
	return p.comparison()
}

func (p *cimiParser) comparison() (cimiFilter, error) {
	p.space()
	start := p.pos
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '/' || c == '.' {
			p.pos++
			continue
		}
		break
	}
	attr := p.src[start:p.pos]
	if attr == "" {
		return nil, fmt.Errorf("Invalid CIMI filter. expected an attribute at character %d", start)
	}
	p.space()
	op := ""
	for _, o := range []string{"!=", "^=", "<=", ">=", "=", "<", ">"} {
		if strings.HasPrefix(p.src[p.pos:], o) {
			op = o
			p.pos += len(o)
			break
		}
	}
	if op == "" {
		return nil, fmt.Errorf("Invalid CIMI filter. expected an operator after %q at character %d", attr, p.pos)
	}
	p.space()
	if strings.HasPrefix(p.src[p.pos:], "null") {
		p.pos += len("null")
		switch op {
		case "=":
			return func(a map[string]string) bool { _, ok := a[attr]; return !ok }, nil
		case "!=":
			return func(a map[string]string) bool { _, ok := a[attr]; return ok }, nil
		}
		return nil, fmt.Errorf("Invalid CIMI filter. null only with = or != (character %d)", p.pos)
	}
	if p.pos < len(p.src) && p.src[p.pos] == '[' {
		if op != "=" {
			return nil, fmt.Errorf("Invalid CIMI filter. a list only with = (character %d)", p.pos)
		}
		p.pos++
		var list []string
		for {
			p.space()
			v, err := p.quoted()
			if err != nil {
				return nil, err
			}
			list = append(list, v)
			p.space()
			if p.pos < len(p.src) && p.src[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.pos < len(p.src) && p.src[p.pos] == ']' {
				p.pos++
				break
			}
			return nil, fmt.Errorf("Invalid CIMI filter. unterminated list at character %d", p.pos)
		}
		return func(a map[string]string) bool {
			v, ok := a[attr]
			if !ok {
				return false
			}
			for _, x := range list {
				if v == x {
					return true
				}
			}
			return false
		}, nil
	}
	val, err := p.quoted()
	if err != nil {
		return nil, err
	}
	return func(a map[string]string) bool {
		v, ok := a[attr]
		if !ok {
			return false // a missing attribute matches only null
		}
		switch op {
		case "=":
			return v == val
		case "!=":
			return v != val
		case "^=":
			return strings.HasPrefix(v, val)
		case "<":
			return v < val
		case "<=":
			return v <= val
		case ">":
			return v > val
		}
		return v >= val
	}, nil
}

// quoted reads a '…' or "…" string (Nuvla strips the quotes and unescapes nothing).
func (p *cimiParser) quoted() (string, error) {
	if p.pos >= len(p.src) || p.src[p.pos] != '\'' && p.src[p.pos] != '"' {
		return "", fmt.Errorf("Invalid CIMI filter. expected a quoted value at character %d", p.pos)
	}
	q := p.src[p.pos]
	end := strings.IndexByte(p.src[p.pos+1:], q)
	if end < 0 {
		return "", fmt.Errorf("Invalid CIMI filter. unterminated string at character %d", p.pos)
	}
	v := p.src[p.pos+1 : p.pos+1+end]
	p.pos += end + 2
	return v, nil
}
