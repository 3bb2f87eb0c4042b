// Package prefilter decides cheaply which rules of a WAF can match a text,
// so that only those run their regular expressions.
//
// For each rule's regular expression, Literals derives a set of strings such
// that every match of the expression contains at least one of them (after
// Fold). An Index holds those strings for every rule; Scan walks a folded
// text once and marks the rules with one of their strings in it. A rule
// without such a set (e.g. `\d+`) has to be run on every text.
//
// The check is one-sided: a rule marked by Scan may still not match (its
// regular expression decides), but a rule that is not marked cannot match.
// Fold maps every rune to one representative of its case-folding orbit, the
// orbits (?i) uses, so case-insensitive expressions keep that guarantee,
// including for non-ASCII folds such as U+017F (ſ) for 's' and U+212A
// (Kelvin) for 'k'.
//
// The package has no wasm dependency: its tests run natively
// (`go test ./waf/prefilter`).
package prefilter

import (
	"regexp/syntax"
	"slices"
	"unicode"
	"unicode/utf8"
)

const (
	// MinLen is the shortest string (in bytes, folded) worth indexing.
	MinLen = 3
	// maxSet bounds the sets of exact strings built while analysing an expression.
	maxSet = 256
	// maxClass is the largest character class expanded into single characters.
	maxClass = 8
)

// FoldRune maps r to the representative of its simple case-folding orbit:
// the smallest rune of the orbit, lowercased when that is ASCII.
func FoldRune(r rune) rune {
	if r < utf8.RuneSelf {
		if 'A' <= r && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}
	least := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		if f < least {
			least = f
		}
	}
	if 'A' <= least && least <= 'Z' {
		least += 'a' - 'A'
	}
	return least
}

// Fold appends the folded form of s to dst. Bytes that are not valid UTF-8
// become U+FFFD, as regexp reads them.
func Fold(dst []byte, s string) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			dst = append(dst, c)
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		dst = utf8.AppendRune(dst, FoldRune(r))
		i += size
	}
	return dst
}

func foldString(s string) string { return string(Fold(nil, s)) }

// Literals returns folded strings of at least MinLen bytes such that every
// match of re contains one of them, and ok=false when it finds no such set.
func Literals(re *syntax.Regexp) (literals []string, ok bool) {
	set := required(analyze(re))
	if set == nil {
		return nil, false
	}
	return set, true
}

// info is what analyze knows of a node: either the exact set of strings it
// matches (exact != nil), or a set of strings one of which each match
// contains (req != nil), or nothing (both nil).
type info struct {
	exact []string
	req   []string
}

func analyze(re *syntax.Regexp) info {
	switch re.Op {
	case syntax.OpNoMatch:
		return info{exact: []string{}}
	case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText,
		syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return info{exact: []string{""}}
	case syntax.OpLiteral:
		return info{exact: []string{foldString(string(re.Rune))}}
	case syntax.OpCharClass:
		return info{exact: classStrings(re.Rune)}
	case syntax.OpCapture:
		return analyze(re.Sub[0])
	case syntax.OpPlus:
		return info{req: required(analyze(re.Sub[0]))}
	case syntax.OpRepeat:
		if re.Min >= 1 {
			return info{req: required(analyze(re.Sub[0]))}
		}
	case syntax.OpConcat:
		return concat(re.Sub)
	case syntax.OpAlternate:
		return alternate(re.Sub)
	}
	// OpAnyChar, OpAnyCharNotNL, OpStar, OpQuest, OpRepeat{0,n}: anything, including nothing.
	return info{}
}

// classStrings returns the folded single characters of a small class, or nil.
func classStrings(ranges []rune) []string {
	count := 0
	for i := 0; i+1 < len(ranges); i += 2 {
		count += int(ranges[i+1]-ranges[i]) + 1
		if count > 4*maxClass {
			return nil
		}
	}
	var out []string
	for i := 0; i+1 < len(ranges); i += 2 {
		for r := ranges[i]; r <= ranges[i+1]; r++ {
			out = append(out, string(FoldRune(r)))
		}
	}
	out = normalize(out)
	if len(out) > maxClass {
		return nil
	}
	return out
}

// concat: adjacent nodes with exact sets multiply into longer exact strings;
// each run of them, and each other node's required set, is a candidate; the
// most selective candidate is the concatenation's required set.
func concat(subs []*syntax.Regexp) info {
	run := []string{""}
	allExact := true
	var best []string
	for _, sub := range subs {
		s := analyze(sub)
		if s.exact != nil {
			if product := multiply(run, s.exact); product != nil {
				run = product
				continue
			}
			allExact = false
			best = better(best, usable(run))
			run = s.exact
			continue
		}
		allExact = false
		best = better(best, usable(run))
		best = better(best, required(s))
		run = []string{""}
	}
	if allExact {
		return info{exact: run}
	}
	return info{req: better(best, usable(run))}
}

// alternate: the union of exact sets while it is small, else the union of
// every branch's required set (nothing if one branch has none).
func alternate(subs []*syntax.Regexp) info {
	infos := make([]info, len(subs))
	allExact := true
	for i, sub := range subs {
		infos[i] = analyze(sub)
		allExact = allExact && infos[i].exact != nil
	}
	if allExact {
		var union []string
		for _, s := range infos {
			union = append(union, s.exact...)
		}
		if union = normalize(union); len(union) <= maxSet {
			if union == nil {
				union = []string{}
			}
			return info{exact: union}
		}
	}
	var union []string
	for _, s := range infos {
		set := required(s)
		if set == nil {
			return info{}
		}
		union = append(union, set...)
	}
	return info{req: normalize(union)}
}

// required is a node's usable required set: its exact strings if all are
// long enough, else what it requires, else nil.
func required(s info) []string {
	if s.exact != nil {
		return usable(s.exact)
	}
	return s.req
}

// usable returns set if it is not empty and every string has MinLen bytes.
func usable(set []string) []string {
	if len(set) == 0 {
		return nil
	}
	for _, s := range set {
		if len(s) < MinLen {
			return nil
		}
	}
	return set
}

// multiply returns every a+b, or nil when that is more than maxSet strings.
func multiply(as, bs []string) []string {
	if len(as)*len(bs) > maxSet {
		return nil
	}
	out := make([]string, 0, len(as)*len(bs))
	for _, a := range as {
		for _, b := range bs {
			out = append(out, a+b)
		}
	}
	out = normalize(out)
	if out == nil {
		out = []string{}
	}
	return out
}

// better returns the more selective of two required sets (nil: none): the
// one whose shortest string is longer (up to 6 bytes, past which all are
// rare enough), then the smaller one.
func better(a, b []string) []string {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	sa, sb := min(shortest(a), 6), min(shortest(b), 6)
	if sa != sb {
		if sa > sb {
			return a
		}
		return b
	}
	if len(b) < len(a) {
		return b
	}
	return a
}

func shortest(set []string) int {
	n := len(set[0])
	for _, s := range set[1:] {
		n = min(n, len(s))
	}
	return n
}

func normalize(set []string) []string {
	slices.Sort(set)
	return slices.Compact(set)
}

// --- the index: an Aho-Corasick automaton over every rule's literals ------

// Index finds, in one pass over a folded text, every rule with one of its
// literals in the text. It is an Aho-Corasick automaton compiled to a full
// transition table: one table read per byte of text, and 1 KiB of memory per
// state (a state per distinct literal prefix), the usual trade of a WAF's
// matchers, memory for speed.
type Index struct {
	pending []entry // literals added, until Build

	delta  []uint32 // delta[state<<8|byte]: the next state
	fail   []uint32 // the state of the longest proper suffix that is a prefix of a literal
	report []uint32 // the first state with literals ending there along state, fail(state), ...; 0: none
	outLo  []uint32 // rules[outLo[s]:outHi[s]]: the rules of the literals ending at state s
	outHi  []uint32
	rules  []int32
}

type entry struct {
	literal string
	rule    int32
}

// NewIndex returns an empty index: Add the literals of every rule, then Build it.
func NewIndex() *Index { return &Index{} }

// Add adds the literals of rule (from Literals, or any non-empty strings).
func (ix *Index) Add(rule int32, literals []string) {
	if ix.delta != nil {
		panic("prefilter: Add after Build")
	}
	for _, lit := range literals {
		if lit == "" {
			panic("prefilter: an empty literal")
		}
		ix.pending = append(ix.pending, entry{lit, rule})
	}
}

// States returns the number of states of the built automaton.
func (ix *Index) States() int { return len(ix.fail) }

// Build compiles the automaton; Scan needs it, Add is over.
func (ix *Index) Build() {
	entries := ix.pending
	ix.pending = nil
	slices.SortFunc(entries, func(a, b entry) int {
		if a.literal != b.literal {
			if a.literal < b.literal {
				return -1
			}
			return 1
		}
		return int(a.rule - b.rule)
	})
	// Sorted literals make a trie in one pass: a literal adds a state per byte past
	// what it shares with the one before.
	states, longest, prev := 1, 0, ""
	for _, e := range entries {
		states += len(e.literal) - commonPrefix(prev, e.literal)
		longest = max(longest, len(e.literal))
		prev = e.literal
	}
	ix.delta = make([]uint32, states<<8)
	ix.fail = make([]uint32, states)
	ix.report = make([]uint32, states)
	ix.outLo = make([]uint32, states)
	ix.outHi = make([]uint32, states)
	ix.rules = make([]int32, len(entries))
	// The trie, kept aside from the table until the failure states are known.
	parent := make([]uint32, states)
	edge := make([]byte, states)
	depth := make([]uint32, states)
	path := []uint32{0} // path[d]: the state after d bytes of the previous literal
	next := uint32(1)
	prev = ""
	for i, e := range entries {
		lit := e.literal
		shared := commonPrefix(prev, lit)
		path = path[:shared+1]
		for d := shared; d < len(lit); d++ {
			parent[next], edge[next], depth[next] = path[d], lit[d], uint32(d+1)
			path = append(path, next)
			next++
		}
		end := path[len(lit)]
		if shared < len(lit) {
			ix.outLo[end] = uint32(i)
		}
		ix.outHi[end] = uint32(i + 1)
		ix.rules[i] = e.rule
		prev = lit
	}
	// The states in order of depth (a counting sort), then level by level: first
	// the trie's edges into the level and the level's failure states (shallower,
	// their rows complete), then each row of the level: a copy of its failure
	// state's row, which already has the edges into this level. The row's own
	// edges go in with the next level.
	levels := make([]uint32, longest+2) // levels[d]: where depth d starts in byDepth
	for _, d := range depth[1:] {
		levels[d+1]++
	}
	for d := 1; d < len(levels); d++ {
		levels[d] += levels[d-1]
	}
	byDepth := make([]uint32, states-1)
	fill := slices.Clone(levels)
	for t := uint32(1); t < uint32(states); t++ {
		byDepth[fill[depth[t]]] = t
		fill[depth[t]]++
	}
	for d := 1; d+1 < len(levels); d++ {
		level := byDepth[levels[d]:levels[d+1]]
		for _, t := range level {
			p, c := parent[t], uint32(edge[t])
			ix.delta[p<<8|c] = t
			if p != 0 {
				ix.fail[t] = ix.delta[ix.fail[p]<<8|c]
			}
			if ix.outHi[t] > ix.outLo[t] {
				ix.report[t] = t
			} else {
				ix.report[t] = ix.report[ix.fail[t]]
			}
		}
		for _, t := range level {
			f := ix.fail[t]
			copy(ix.delta[t<<8:(t+1)<<8], ix.delta[f<<8:(f+1)<<8])
		}
	}
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// Scan sets marks[rule] = stamp for every rule with a literal in folded (a
// text passed through Fold).
func (ix *Index) Scan(folded []byte, marks []uint32, stamp uint32) {
	if ix.delta == nil {
		return
	}
	delta, report, fail := ix.delta, ix.report, ix.fail
	s := uint32(0)
	for _, b := range folded {
		s = delta[s<<8|uint32(b)]
		for o := report[s]; o != 0; o = report[fail[o]] {
			for _, rule := range ix.rules[ix.outLo[o]:ix.outHi[o]] {
				marks[rule] = stamp
			}
		}
	}
}
