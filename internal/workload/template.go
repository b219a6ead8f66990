package workload

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

var placeholderRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// ExpandTemplate substitutes every ${NAME} in a .json.tmpl spec with the
// JSON-escaped value of vars[NAME]. Only the braced form is replaced, so
// shell variables such as $BB inside commands are left alone. A name with
// no value is an error that lists every missing name.
func ExpandTemplate(text string, vars map[string]string) (string, error) {
	missing := map[string]bool{}
	out := placeholderRE.ReplaceAllStringFunc(text, func(m string) string {
		name := placeholderRE.FindStringSubmatch(m)[1]
		v, ok := vars[name]
		if !ok {
			missing[name] = true
			return m
		}
		return jsonEscape(v)
	})

	// every missing name is reported at once, sorted
	if len(missing) > 0 {
		names := make([]string, 0, len(missing))
		for n := range missing {
			names = append(names, n)
		}
		sort.Strings(names)
		return "", fmt.Errorf("workload: template variables not set: %s", strings.Join(names, ", "))
	}

	return out, nil
}

// jsonEscape escapes v for use inside a JSON string literal.
func jsonEscape(v string) string {
	var b strings.Builder
	for _, r := range v {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}

	return b.String()
}

// Placeholders returns the distinct ${NAME} placeholders in text, sorted.
func Placeholders(text string) []string {
	seen := map[string]bool{}
	for _, m := range placeholderRE.FindAllStringSubmatch(text, -1) {
		seen[m[1]] = true
	}

	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
