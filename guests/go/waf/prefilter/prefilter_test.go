package prefilter

import (
	"math/rand"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"testing"
)

func literals(t *testing.T, expr string) ([]string, bool) {
	t.Helper()
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		t.Fatal(err)
	}
	return Literals(re)
}

func TestLiterals(t *testing.T) {
	cases := []struct {
		expr string
		want []string // nil: no usable set
	}{
		{`select`, []string{"select"}},
		{`(?i)SeLeCt`, []string{"select"}},
		{`(?i)union\s+select`, []string{"select"}},
		{`(?:union|select)\s+(?:all|from)`, []string{"select", "union"}},
		{`<script\b`, []string{"<script"}},
		{`(?i)on(?:load|error)\s*=`, []string{"onerror", "onload"}},
		{`\.\./|\.\.\\`, []string{"../", "..\\"}},
		{`[Ss][Ee][Ll]`, []string{"sel"}},
		{`abc|\d+`, nil},
		{`ab`, nil},
		{`a.*b`, nil},
		{`x*abcd`, []string{"abcd"}},
		{`(?:abc)+`, []string{"abc"}},
		{`(?:abc){2,5}`, []string{"abc"}},
		{`(?:abc){0,5}`, nil},
		{`(?i)\bk\w+`, nil},
		{`(?i)kelvin`, []string{"kelvin"}},
	}
	for _, c := range cases {
		got, ok := literals(t, c.expr)
		if c.want == nil {
			if ok {
				t.Errorf("%q: got %q, want no set", c.expr, got)
			}
			continue
		}
		if !ok || !slices.Equal(got, c.want) {
			t.Errorf("%q: got %q (%v), want %q", c.expr, got, ok, c.want)
		}
	}
}

func TestFoldMatchesRegexpCaseFolding(t *testing.T) {
	for _, pair := range [][2]string{{"ſ", "s"}, {"\u212a", "k"}, {"S", "s"}, {"É", "é"}, {"Ω", "ω"}, {"\u2126", "ω"}} {
		if a, b := string(Fold(nil, pair[0])), string(Fold(nil, pair[1])); a != b {
			t.Errorf("Fold(%q) = %q, Fold(%q) = %q", pair[0], a, pair[1], b)
		}
	}
	if got := string(Fold(nil, "a\xffb")); got != "a\uFFFDb" {
		t.Errorf("invalid UTF-8 folds to %q", got)
	}
}

// The guarantee: whenever an expression matches a text, the folded text
// contains one of the expression's literals, so Scan marks its rule.
func TestScanNeverMissesAMatch(t *testing.T) {
	exprs := []string{
		`(?i)union\s+(?:all\s+)?select`, `(?i)<script[^>]*>`, `(?i)\bor\b\s*'?\d+'?\s*=\s*'?\d+`,
		`(?i)on(?:load|error|click)\s*=`, `\.\./`, `(?i)/etc/(?:passwd|shadow)`, `(?i)javas\s*cript:`,
		`(?i)sleep\(\s*\d+\s*\)`, `(?i)(?:kk|ss)abc`, `[Kk]elvin|[Ss]ssx`, `(?i)\x{212a}ey`, `abc|ab`,
		`(?:ab|cd)(?:ef|gh)(?:ij|kl)`, `(?i)x(?:ab|cd)+y`, `(?i)(?:select|update)\b.{0,20}\bfrom`,
	}
	pieces := []string{
		"union", "UNION", "select", "SeLeCt", " ", "\t", "all", "<", "script", "SCRIPT", ">", "or", "OR", "'", "1",
		"=", "on", "load", "ERROR", "click", "..", "/", "etc", "passwd", "shadow", "java", "javas", "cript:", "sleep",
		"(", ")", "ſ", "\u212a", "K", "k", "s", "S", "abc", "ABC", "elvin", "x", "ey", "\xff", "é", "from", "FROM",
		"update", "ab", "cd", "ef", "gh", "ij", "kl", "y", "Y",
	}
	rng := rand.New(rand.NewSource(1))
	ix := NewIndex()
	compiled := make([]*regexp.Regexp, len(exprs))
	always := make([]bool, len(exprs))
	for i, expr := range exprs {
		compiled[i] = regexp.MustCompile(expr)
		lits, ok := literals(t, expr)
		if ok {
			ix.Add(int32(i), lits)
		} else {
			always[i] = true
		}
	}
	ix.Build()
	marks := make([]uint32, len(exprs))
	matched := 0
	for n := uint32(1); n <= 100000; n++ {
		var b strings.Builder
		for range 1 + rng.Intn(12) {
			b.WriteString(pieces[rng.Intn(len(pieces))])
		}
		text := b.String()
		ix.Scan(Fold(nil, text), marks, n)
		for i, re := range compiled {
			if re.MatchString(text) {
				matched++
				if !always[i] && marks[i] != n {
					t.Fatalf("%q matches %q but the prefilter did not mark it", exprs[i], text)
				}
			}
		}
	}
	if matched < 1000 {
		t.Fatalf("only %d matches: the random texts do not exercise the rules", matched)
	}
}

// Scan marks exactly the rules with a literal in the text, overlapping or not.
func TestScanFindsEveryLiteral(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	alphabet := "abc/é"
	randomString := func(n int) string {
		var b strings.Builder
		for range n {
			b.WriteByte(alphabet[rng.Intn(len(alphabet))])
		}
		return b.String()
	}
	var literals [][]string
	ix := NewIndex()
	for rule := range 300 {
		var lits []string
		for range 1 + rng.Intn(3) {
			lits = append(lits, randomString(3+rng.Intn(5)))
		}
		literals = append(literals, lits)
		ix.Add(int32(rule), lits)
	}
	ix.Add(300, []string{"abcabc"}) // a literal twice, for two rules
	ix.Add(301, []string{"abcabc", "ccc"})
	literals = append(literals, []string{"abcabc"}, []string{"abcabc", "ccc"})
	ix.Build()
	if ix.States() < 100 {
		t.Fatalf("%d states", ix.States())
	}
	marks := make([]uint32, len(literals))
	for n := uint32(1); n <= 3000; n++ {
		text := randomString(rng.Intn(40))
		ix.Scan([]byte(text), marks, n)
		for rule, lits := range literals {
			want := slices.ContainsFunc(lits, func(lit string) bool { return strings.Contains(text, lit) })
			if got := marks[rule] == n; got != want {
				t.Fatalf("rule %d (%q) in %q: marked %v, want %v", rule, lits, text, got, want)
			}
		}
	}
}
