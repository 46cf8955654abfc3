package postgres

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// What the local database refuses a change for, because of what it holds,
// parks the change; what may pass by itself (a lock, a deadlock, a missing
// relation) stops the stream until it does.
func TestDataErrorsAreWhatAChangeHolds(t *testing.T) {
	for code, want := range map[string]bool{
		"23505": true,  // unique violation
		"23503": true,  // foreign key
		"22001": true,  // value too long
		"P0001": true,  // an application's trigger raised an error
		"P0004": true,  // an assertion in a trigger
		"42501": false, // a privilege (or row-level security): every change of the table would park
		"54000": true,  // index row too large
		"40P01": false,
		"40001": false,
		"55P03": false,
		"42P01": false,
		"57P01": false,
		"54001": false,
	} {
		err := fmt.Errorf("apply: %w", &pgconn.PgError{Code: code})
		if got := isDataError(err); got != want {
			t.Errorf("%s: isDataError = %v, want %v", code, got, want)
		}
	}
	if isDataError(retryable{&pgconn.PgError{Code: "23505"}}) {
		t.Error("an error marked retryable is taken as a data error")
	}
}
