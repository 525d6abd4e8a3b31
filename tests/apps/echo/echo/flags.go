package echo

import (
	"fmt"
	"strconv"
	"strings"
)

// ParsePorts parses a comma-separated list of ports such as "8080,8081".
// An empty string gives no ports. Each port must be a number from 1 to 65535
// and appear once.
func ParsePorts(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var ports []int
	seen := map[int]bool{}
	for _, field := range strings.Split(s, ",") {
		field = strings.TrimSpace(field)
		p, err := strconv.Atoi(field)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("port %q in %q: want a number from 1 to 65535", field, s)
		}
		if seen[p] {
			return nil, fmt.Errorf("port %d in %q: listed twice", p, s)
		}
		seen[p] = true
		ports = append(ports, p)
	}
	return ports, nil
}

// ParseHeader parses a header given as "Name: value".
func ParseHeader(s string) (name, value string, err error) {
	name, value, ok := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if !ok || name == "" || strings.ContainsAny(name, " \t") {
		return "", "", fmt.Errorf("header %q: want \"Name: value\"", s)
	}
	return name, strings.TrimSpace(value), nil
}
