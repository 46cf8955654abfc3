package postgres

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestPinTimeoutsTurnsOffWhatTheConnectionStringLeavesUnset(t *testing.T) {
	cfg, err := pgconn.ParseConfig("postgres://replicator@localhost/app?statement_timeout=10min")
	if err != nil {
		t.Fatal(err)
	}
	pinTimeouts(cfg)
	want := map[string]string{"statement_timeout": "10min", "lock_timeout": "0", "idle_in_transaction_session_timeout": "0", "idle_session_timeout": "0"}
	for k, v := range want {
		if got := cfg.RuntimeParams[k]; got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if _, set := cfg.RuntimeParams["transaction_timeout"]; set {
		t.Error("transaction_timeout set at connection: a server before 17 refuses the name")
	}
	if cfg.AfterConnect == nil {
		t.Error("no step after connecting turns transaction_timeout off")
	}
}

func TestPinTimeoutsKeepsATransactionTimeoutTheConnectionStringSets(t *testing.T) {
	cfg, err := pgconn.ParseConfig("postgres://replicator@localhost/app?transaction_timeout=1h")
	if err != nil {
		t.Fatal(err)
	}
	pinTimeouts(cfg)
	if cfg.AfterConnect != nil {
		t.Error("a step after connecting would turn off the transaction_timeout the connection string sets")
	}
	if got := cfg.RuntimeParams["transaction_timeout"]; got != "1h" {
		t.Errorf("transaction_timeout = %q, want 1h", got)
	}
}
