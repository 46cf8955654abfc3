package postgres

import (
	"strings"
	"testing"
	"time"
)

func TestLockBusyNamesTheSessionsThatHeldTheTable(t *testing.T) {
	e := &LockBusy{
		Tables: []string{"public.tally"}, What: "seed public.tally", Waited: 30*time.Second + 123*time.Millisecond,
		Holders: []string{
			describeHolder(4242, "app", "billing", "idle in transaction", 41),
			describeHolder(4343, "", "", "", -1), // another role's session: only its pid is visible
		},
	}
	want := `seed public.tally: could not lock public.tally within 30.123s (each wait at most 200ms, so that the applications' writes do not queue behind it): ` +
		`held by pid 4242, role app, application "billing", idle in transaction, transaction open 41s; pid 4343`
	if got := e.Error(); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if got := (&LockBusy{Tables: []string{"a.b", "c.d"}, What: "x", Waited: time.Second}).Error(); !strings.HasSuffix(got, "held by sessions that ended meanwhile") {
		t.Fatalf("no holders left: %s", got)
	}
}
