package postgres

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrUnencodedAt is returned for a URL connection string with an
// unencoded '@' in its user name or password: what follows it would be
// taken as the host or database name, so part of the password would be
// looked up in DNS and shown in every connection error.
var ErrUnencodedAt = errors.New("more than one '@' before the query: in a URL connection string, percent-encode '@' in the user name, password or database name as %40 (and ':' '/' '?' '#' as %3A %2F %3F %23)")

// ParseConnString parses the local database's connection string, once, and
// refuses one that cannot mean what was written. Its errors never contain
// the password.
func ParseConnString(s string) (*pgconn.Config, error) {
	if isURL(s) {
		// An '@' in the user name or password must be encoded: the parser
		// takes the first '@' as the end of them, so the rest of a
		// password would become the host or the database name.
		before, _, _ := strings.Cut(s, "?")
		if strings.Count(before, "@") > 1 {
			return nil, ErrUnencodedAt
		}
	}
	cfg, err := pgconn.ParseConfig(s)
	if err != nil {
		// pgconn's own message masks the password (xxxxx).
		return nil, fmt.Errorf("cannot parse the connection string: %w", err)
	}
	return cfg, nil
}

// ConnSecrets returns the secrets a connection string carries (its
// password, however given: in the string, PGPASSWORD or a password file),
// for redaction. It returns nothing for a string that does not parse.
func ConnSecrets(s string) []string {
	cfg, err := pgconn.ParseConfig(s)
	if err != nil {
		return nil
	}
	return []string{cfg.Password}
}

func isURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}
