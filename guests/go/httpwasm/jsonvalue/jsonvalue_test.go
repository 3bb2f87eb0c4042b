package jsonvalue

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// Documents Parse must agree on with encoding/json (value, or that it is invalid).
var corpus = []string{
	`{}`, `[]`, `""`, `0`, `-0`, `1.5e3`, `-12.25E-2`, `true`, `false`, `null`, ` {"a" : [1, 2, {"b": null}] } `,
	`{"redirects": {"/old": "/new"}, "rewrites": {"/api/": "/v2/"}}`,
	`{"request": [{"from": "a\"b", "to": "\u00e9\n\t\\/"}], "response": []}`,
	`"\ud83d\ude00"`, `"\ud83d"`, `"\ude00x"`, `"\ud83dx"`, `"\ud83d\u0041"`, `"\u0000"`, "\"\xff\xfe ok\"",
	"\"caf\xc3\xa9\"", `{"a": 1, "a": 2}`, `[[[[[]]]]]`, `1e999`, `123456789012345678901234567890`,
	// invalid
	``, ` `, `{`, `}`, `[1,]`, `{"a":1,}`, `{"a" 1}`, `{a: 1}`, `[1 2]`, `01`, `1.`, `.5`, `-`, `1e`, `1e+`,
	`+1`, `tru`, `nul`, `True`, `"abc`, "\"a\nb\"", `"\x"`, `"\u12"`, `"\u12g4"`, `{"a":1} x`, `[] []`, `'a'`,
	"\x00", `[` + strings.Repeat("[", 300) + strings.Repeat("]", 301),
}

func TestParseAgreesWithEncodingJSON(t *testing.T) {
	for _, doc := range corpus {
		check(t, doc)
	}
}

func check(t *testing.T, doc string) {
	t.Helper()
	got, err := Parse([]byte(doc))
	var want any
	wantErr := json.Unmarshal([]byte(doc), &want)
	if len(doc) > 300 { // encoding/json nests deeper than we allow
		if err == nil {
			t.Errorf("Parse(deeply nested) = nil error")
		}
		return
	}
	if (err != nil) != (wantErr != nil) {
		t.Errorf("Parse(%q) error = %v, encoding/json error = %v", doc, err, wantErr)
		return
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Errorf("Parse(%q) = %#v, encoding/json = %#v", doc, got, want)
	}
	if err != nil {
		var syntax *SyntaxError
		if !errors.As(err, &syntax) || syntax.Offset < 0 || syntax.Offset > len(doc) {
			t.Errorf("Parse(%q) error %v is not a SyntaxError with an offset in the input", doc, err)
		}
	}
}

func TestErrorsSayWhereAndWhat(t *testing.T) {
	_, err := Parse([]byte(`{"a": [1, 2,, 3]}`))
	if err == nil || err.Error() != "json: unexpected character ',' at offset 12" {
		t.Errorf("error = %v", err)
	}
	_, err = Parse([]byte(`{"a": 1`))
	if err == nil || err.Error() != "json: expected ',' or '}' at offset 7" {
		t.Errorf("error = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, doc := range corpus {
		f.Add(doc)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		if len(doc) <= 300 {
			check(t, doc)
		}
	})
}
