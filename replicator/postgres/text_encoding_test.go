package postgres

import (
	"context"
	"testing"
)

// TestTextEncodingIsWhatTheBytesAreIn: the session's client_encoding,
// unless either side is SQL_ASCII, where nothing is converted.
func TestTextEncodingIsWhatTheBytesAreIn(t *testing.T) {
	for _, c := range []struct{ server, client, want string }{
		{"UTF8", "UTF8", "UTF8"},
		{"WIN1252", "WIN1252", "WIN1252"},
		{"WIN1252", "UTF8", "UTF8"},
		{"UTF8", "LATIN1", "LATIN1"},
		{"SQL_ASCII", "UTF8", "SQL_ASCII"},
		{"SQL_ASCII", "SQL_ASCII", "SQL_ASCII"},
		{"UTF8", "SQL_ASCII", "UTF8"},
		{"LATIN1", "SQL_ASCII", "LATIN1"},
	} {
		if got := textEncoding(c.server, c.client); got != c.want {
			t.Errorf("server %s, client %s: %s, want %s", c.server, c.client, got, c.want)
		}
	}
}

// TestUTF8TextOverridesTheConnectionString: under WithUTF8Text a session
// asks for UTF8 whatever its connection string set; otherwise the string's
// setting (or none) stands.
func TestUTF8TextOverridesTheConnectionString(t *testing.T) {
	for _, set := range []string{"", "WIN1252"} {
		params := map[string]string{}
		if set != "" {
			params["client_encoding"] = set
		}
		textInUTF8(context.Background(), params)
		if params["client_encoding"] != set {
			t.Errorf("without WithUTF8Text: client_encoding %q, want %q", params["client_encoding"], set)
		}
		textInUTF8(WithUTF8Text(context.Background()), params)
		if params["client_encoding"] != "UTF8" {
			t.Errorf("with WithUTF8Text over %q: client_encoding %q, want UTF8", set, params["client_encoding"])
		}
	}
}
