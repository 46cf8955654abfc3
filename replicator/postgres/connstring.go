package postgres

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrUnencodedAt is returned for a URL connection string with an
// unencoded '@' in its user name or password: what follows it would be
// taken as the host or database name, so part of the password would be
// looked up in DNS and shown in every connection error.
var ErrUnencodedAt = errors.New("an unencoded '@', '/', '?' or '#' around the user name and password: in a URL connection string, percent-encode '@' in the user name, password or database name as %40 (and ':' '/' '?' '#' as %3A %2F %3F %23)")

// ParseConnString parses the local database's connection string, once, and
// refuses one that cannot mean what was written. Its errors never contain
// the password.
func ParseConnString(s string) (*pgconn.Config, error) {
	if isURL(s) {
		// An '@' in the user name or password must be encoded: the parser
		// takes the first '@' as the end of them, so the rest of a
		// password would become the host or the database name. So must
		// '/', '?' and '#', which end the part before the '@'.
		before, _, _ := strings.Cut(s, "?")
		_, rest, _ := strings.Cut(before, "://")
		if strings.Count(before, "@") > 1 {
			return nil, ErrUnencodedAt
		}
		if at := strings.LastIndex(rest, "@"); at >= 0 && strings.ContainsAny(rest[:at], "/?#") {
			return nil, ErrUnencodedAt
		}
	}
	if _, err := pgconn.ParseConfig(s); err != nil {
		// The parser's message can quote the string (its masking of the
		// password misses some forms, and a URL parser's error quotes
		// the URL whole): say only which form could not be read.
		if isURL(s) {
			return nil, errors.New("cannot parse the URL connection string: percent-encode special characters of the user name and password, and give the port as a number")
		}
		return nil, errors.New("cannot parse the keyword/value connection string: write each setting as key=value, quoting values with spaces or quotes in single quotes (password='a b', backslash before a quote)")
	}
	cfg, err := pgconn.ParseConfig(s)
	if err != nil {
		return nil, errors.New("cannot parse the connection string")
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
