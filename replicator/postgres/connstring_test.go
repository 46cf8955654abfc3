package postgres

import (
	"errors"
	"strings"
	"testing"
)

func TestParseConnStringRefusesAnUnencodedAtWithoutShowingIt(t *testing.T) {
	for _, s := range []string{
		"postgres://app:pa@ght_Secret42@127.0.0.1:5432/db",
		"postgres://app:pa@ght_Secret42@127.0.0.1:5432,10.0.0.2:5432/db",
		"postgres://app:Planted@Secret/42@127.0.0.1:5432/db", // parsed as host "Secret", database "42@..."
		"postgres://u:1234/ght_Secret42@db.example/app",      // one '@', but the password's '/' ends the host part
	} {
		_, err := ParseConnString(s)
		if !errors.Is(err, ErrUnencodedAt) {
			t.Errorf("ParseConnString(%q) = %v, want ErrUnencodedAt", s, err)
			continue
		}
		if strings.Contains(err.Error(), "ght_Secret42") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestParseConnStringNeverQuotesTheStringInParseErrors(t *testing.T) {
	for _, s := range []string{
		"postgres://app:pa/ght_Secret42@127.0.0.1:5432/db",
		"host=db password = ght_Secret42 sslmode=bogus", // spaces around '=' escape the parser's own masking
		`host=db password='ght_\'Secret42 2' port=x`,
		"host=db password=ght_Secret42 x",
		"postgres://app:ght_Secret42@127.0.0.1:notaport/db",
	} {
		_, err := ParseConnString(s)
		if err == nil {
			t.Errorf("ParseConnString(%q) parsed", s)
			continue
		}
		if strings.Contains(err.Error(), "Secret42") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestParseConnStringTakesValidForms(t *testing.T) {
	for _, s := range []string{
		"postgres://app:pa%40ght_Secret42@127.0.0.1:5432/db",
		"host=/var/run/postgresql dbname=app user=app password=pa@ght",
		"postgres:///app?host=/tmp",
		"postgres://app:pw@h/db?application_name=me@example.com",
	} {
		cfg, err := ParseConnString(s)
		if err != nil {
			t.Errorf("ParseConnString(%q): %v", s, err)
			continue
		}
		if got := ConnSecrets(s); len(got) != 1 || got[0] != cfg.Password {
			t.Errorf("ConnSecrets(%q) = %q, want the password", s, got)
		}
	}
}

// TestWithUTF8TextSetsTheClientEncodingAndKeepsTheRest: whatever form the
// string takes and whatever encoding it asked for, the sessions it opens
// receive UTF-8, and everything else it says (hosts, password, options)
// is kept.
func TestWithUTF8TextSetsTheClientEncodingAndKeepsTheRest(t *testing.T) {
	for _, s := range []string{
		"postgres://app:p%40ss%2Fw@127.0.0.1:5432/db",
		"postgres://app:secret@127.0.0.1:5432,10.0.0.2:5433/db?sslmode=disable&application_name=x",
		"postgresql://app@127.0.0.1/db?client_encoding=LATIN1&sslmode=disable",
		"host=127.0.0.1 port=5432 user=app password='a b' dbname=db",
		"host=127.0.0.1 user=app client_encoding=WIN1252 dbname=db",
	} {
		before, err := ParseConnString(s)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		w := WithUTF8Text(s)
		after, err := ParseConnString(w)
		if err != nil {
			t.Fatalf("WithUTF8Text(%q) = %q: %v", s, w, err)
		}
		if got := after.RuntimeParams["client_encoding"]; got != "UTF8" {
			t.Errorf("WithUTF8Text(%q): client_encoding %q, want UTF8", s, got)
		}
		if after.Password != before.Password || after.User != before.User || after.Database != before.Database ||
			after.Host != before.Host || after.Port != before.Port || len(after.Fallbacks) != len(before.Fallbacks) {
			t.Errorf("WithUTF8Text(%q) = %q changed the connection: %s@%s:%d/%s (%d fallbacks), was %s@%s:%d/%s (%d)", s, w,
				after.User, after.Host, after.Port, after.Database, len(after.Fallbacks), before.User, before.Host, before.Port, before.Database, len(before.Fallbacks))
		}
		for k, v := range before.RuntimeParams {
			if k != "client_encoding" && after.RuntimeParams[k] != v {
				t.Errorf("WithUTF8Text(%q): %s = %q, was %q", s, k, after.RuntimeParams[k], v)
			}
		}
		if again := WithUTF8Text(w); again != w {
			t.Errorf("WithUTF8Text twice: %q, then %q", w, again)
		}
	}
}
