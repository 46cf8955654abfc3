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
