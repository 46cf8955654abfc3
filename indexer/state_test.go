package indexer

import "testing"

// What jsonb refuses in a refused document's text is found, so the dead
// letter is kept without the document instead of failing (which stopped
// the feed at that change for ever); everything else is kept as it is.
func TestJSONBRefusesEscapedNULAndLoneSurrogates(t *testing.T) {
	for doc, refused := range map[string]bool{
		`{"a":"\u0000"}`:                 true,
		`{"a":"x\u0000y"}`:               true,
		`{"\u0000":1}`:                   true,
		`{"a":"\ud800"}`:                 true,
		`{"a":"\ud800x"}`:                true,
		`{"a":"\ud800\u0041"}`:           true,
		`{"a":"\udc00"}`:                 true,
		`{"a":"\ud83d\ude00"}`:           false,
		`{"a":"\\u0000"}`:                false, // a backslash, then the text u0000
		`{"a":"\"\u0041"}`:               false,
		`{"a":"plain é ☃", "b":[1,2.5]}`: false,
		`{"a":"\u00e9\u20ac"}`:           false,
		`{"a":"\u12"}`:                   false, // not JSON: the engine said why already
	} {
		if got := jsonbRefuses([]byte(doc)) != ""; got != refused {
			t.Errorf("%s: refused %v, want %v (%q)", doc, got, refused, jsonbRefuses([]byte(doc)))
		}
	}
}

// A refusal's reason that quotes a NUL or bytes that are not UTF-8 is
// recorded with those spelt out or replaced, not refused by the column.
func TestStorableTextHasNoNULAndIsUTF8(t *testing.T) {
	got := storableText("Preview of field's value: 'a\x00b\xffc'")
	if got != "Preview of field's value: 'a\\u0000b\uFFFDc'" {
		t.Errorf("storableText = %q", got)
	}
}
