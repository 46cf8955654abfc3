package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Text in the tests below is written with Unicode escapes (U&'...'), which
// mean the same characters whatever the session's encoding.
const encodedNotesSchema = `CREATE TABLE public.notes (id text PRIMARY KEY, title text NOT NULL)`

// TestRegionsWhoseTextEncodingsDifferRefuseEachOther: us's database is in
// UTF8, eu's in WIN1252, and each replicator's sessions exchange text in
// their database's encoding. A value's bytes would be applied as they
// arrive, so "é" written in us would read "Ã©" in eu, and eu's "é" (one
// byte, 0xE9) would be refused by us's server and stop the stream. check
// names each region's encoding and warns in eu. Instead
// eu's join from us is refused before it loads anything, and once eu runs
// each region refuses the other's stream, naming both encodings and the
// setting that reconciles them; nothing crosses. eu's search index, whose
// documents are JSON, holds its own rows' text as written (it read them in
// WIN1252 and gave the engine U+FFFD for every byte outside ASCII). Last,
// eu's sessions switched to UTF8 while its outbox holds a transaction read
// in WIN1252 that us has not acknowledged: it refuses to start.
func TestRegionsWhoseTextEncodingsDifferRefuseEachOther(t *testing.T) {
	dir := testDir(t)
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: []string{encodedNotesSchema}, Tables: []TableSpec{{Name: "public.notes"}},
		Encodings: map[string]string{"eu": "WIN1252"},
		Configure: func(region string, c *RegionConfig) {
			if region == "eu" {
				c.Search = &SearchSection{Kind: "embedded", Dir: filepath.Join(dir, region+"-index"), FlushInterval: "100ms",
					Indices: []SearchIndex{{Table: "public.notes", Index: "notes"}}}
			}
		}})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.notes VALUES ('seed', U&'caf\00e9')`)
	for _, c := range []struct {
		r       *Region
		enc     string
		warning bool
	}{{us, "UTF8", false}, {eu, "WIN1252", true}} {
		out, err := exec.Command(binary, "check", "--config", c.r.ConfigPath).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ready") || !strings.Contains(string(out), "text in "+c.enc) ||
			strings.Contains(string(out), "warning: the database sessions exchange text in "+c.enc) != c.warning {
			t.Fatalf("check in %s (%s, warning %v): %v\n%s", c.r.Name, c.enc, c.warning, err, out)
		}
	}
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	if err := eu.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, time.Minute, "eu's join from us to be refused", func() bool { return !eu.Running() })
	if logs := eu.Logs(1 << 20); !strings.Contains(logs, "text encoding") || !strings.Contains(logs, "WIN1252") || !strings.Contains(logs, "UTF8") {
		t.Fatalf("eu's join ended without naming the two encodings:\n%s", logs)
	}
	if n := notes(t, ctx, eu); len(n) != 0 {
		t.Fatalf("eu loaded %v from a refused join", n)
	}
	if err := eu.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := eu.LastExit(); st == nil || st.Success() {
		t.Fatalf("eu's refused join exited %v, want a failure", st)
	}

	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Region{us, eu} {
		waitFor(ctx, t, time.Minute, r.Name+"'s /status to name the encodings", func() bool {
			_, body := opsGet(t, r, "/status")
			return strings.Contains(body, "text encoding") && strings.Contains(body, "WIN1252") && strings.Contains(body, "client_encoding")
		})
	}
	// Written once both replicators run (their readers ship them), while
	// their streams are refused.
	mustExec(t, ctx, us, `INSERT INTO public.notes VALUES (U&'caf\00e9', U&'caf\00e9 \20ac')`)
	mustExec(t, ctx, eu, `INSERT INTO public.notes VALUES (U&'\00e9t\00e9', U&'na\00efve \20ac')`)
	// eu's own row in its index, text and key as written.
	waitFor(ctx, t, time.Minute, "eu's index to hold its row", func() bool {
		docs := searchDocs(ctx, t, eu, "")
		return docs["été"]["title"] == "naïve €"
	})
	// Both streams refused from their first frame: nothing crossed, though
	// each reader shipped its region's row (the streams are tried again).
	waitFor(ctx, t, time.Minute, "both readers to ship their row", func() bool {
		return queryInt(t, ctx, us, `SELECT count(*) FROM polyregion.outbox`) > 0 && queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.outbox`) > 0
	})
	time.Sleep(2 * time.Second)
	if got := notes(t, ctx, us); len(got) != 2 || got["café"] != "café €" || got["seed"] != "café" {
		t.Fatalf("us holds %q, want its own two rows only", got)
	}
	if got := notes(t, ctx, eu); len(got) != 1 || got["été"] != "naïve €" {
		t.Fatalf("eu holds %q, want its own row only", got)
	}
	if docs := searchDocs(ctx, t, eu, ""); len(docs) != 1 {
		t.Fatalf("eu's index holds %v, want its own row only", docs)
	}

	// eu's row waits in its outbox, read in WIN1252. Were eu's sessions
	// switched to UTF8 now, it would ship those bytes as UTF-8: it refuses
	// to start, naming the backlog.
	if err := eu.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(eu.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	switched := strings.Replace(string(b), "?sslmode=disable\n", "?sslmode=disable&client_encoding=UTF8\n", 1)
	if switched == string(b) {
		t.Fatalf("eu's configuration has no connection string to switch:\n%s", b)
	}
	if err := os.WriteFile(eu.ConfigPath, []byte(switched), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, time.Minute, "eu to refuse to start with its backlog", func() bool { return !eu.Running() })
	if logs := eu.Logs(1 << 20); !strings.Contains(logs, "exchange text in UTF8 now and did in WIN1252 before") || !strings.Contains(logs, "not every peer has acknowledged") {
		t.Fatalf("eu started in UTF8 sessions over a WIN1252 backlog, or did not say why it would not:\n%s", logs)
	}
	if err := eu.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := eu.LastExit(); st == nil || st.Success() {
		t.Fatalf("eu exited %v over its backlog, want a failure", st)
	}
}

// TestARegionAloneChangesItsEncodingAtARestart: a region with no peer
// switches its sessions' encoding over what its outbox holds (nobody waits
// for it; a region joining later streams only what follows its snapshot),
// and records the new one: switching back with a peer would be checked
// against it.
func TestARegionAloneChangesItsEncodingAtARestart(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: []string{encodedNotesSchema}, Tables: []TableSpec{{Name: "public.notes"}},
		Encodings: map[string]string{"us": "WIN1252"}})
	ctx := ctxFor(t, 2*time.Minute)
	us := h.Regions[0]
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, time.Minute, "us to record its encoding", func() bool {
		return recordedEncoding(ctx, us) == "WIN1252"
	})
	mustExec(t, ctx, us, `INSERT INTO public.notes VALUES (U&'caf\00e9', U&'caf\00e9')`)
	waitFor(ctx, t, time.Minute, "us to ship its row", func() bool {
		return queryInt(t, ctx, us, `SELECT count(*) FROM polyregion.outbox`) > 0
	})
	if err := us.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(us.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(us.ConfigPath, []byte(strings.Replace(string(b), "?sslmode=disable\n", "?sslmode=disable&client_encoding=UTF8\n", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, time.Minute, "us to run in UTF8 sessions and record it", func() bool {
		return us.Running() && recordedEncoding(ctx, us) == "UTF8"
	})
	time.Sleep(2 * time.Second)
	if !us.Running() {
		t.Fatalf("us stopped after switching its encoding alone:\n%s", us.Logs(4000))
	}
}

// TestRegionsReplicateAcrossDatabaseEncodingsInUTF8Sessions: with
// client_encoding=UTF8 in both regions' connection strings, a UTF8 and a
// WIN1252 database replicate text both ways, each server converting it.
func TestRegionsReplicateAcrossDatabaseEncodingsInUTF8Sessions(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: []string{encodedNotesSchema}, Tables: []TableSpec{{Name: "public.notes"}},
		Encodings: map[string]string{"eu": "WIN1252"},
		Configure: func(region string, c *RegionConfig) { c.Database += "&client_encoding=UTF8" }})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, []string{"public.notes"}, time.Minute); err != nil {
		t.Fatalf("replicators did not come up: %v", err)
	}
	mustExec(t, ctx, us, `INSERT INTO public.notes VALUES (U&'caf\00e9', U&'caf\00e9 \20ac')`)
	mustExec(t, ctx, eu, `INSERT INTO public.notes VALUES (U&'\00e9t\00e9', U&'na\00efve')`)
	mustExec(t, ctx, us, `INSERT INTO public.notes VALUES ('after', 'after')`)
	want := map[string]string{"café": "café €", "été": "naïve", "after": "after"}
	if !eventually(ctx, time.Minute, func() bool {
		u, e := notes(t, ctx, us), notes(t, ctx, eu)
		return sameNotes(u, want) && sameNotes(e, want)
	}) {
		t.Fatalf("us holds %q and eu %q, want %q in both", notes(t, ctx, us), notes(t, ctx, eu), want)
	}
	mustExec(t, ctx, eu, `UPDATE public.notes SET title = U&'\20ac 2' WHERE id = U&'caf\00e9'`)
	waitFor(ctx, t, time.Minute, "us to hold eu's update", func() bool { return notes(t, ctx, us)["café"] == "€ 2" })
}

// sameNotes reports whether got holds want's rows and no other.
func sameNotes(got, want map[string]string) bool {
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return len(got) == len(want)
}

// notes reads public.notes in r, text in UTF-8.
func notes(t *testing.T, ctx context.Context, r *Region) map[string]string {
	t.Helper()
	conn, err := pgx.Connect(ctx, r.Cluster.URL("postgres", AppDB)+"&client_encoding=UTF8")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT id, title FROM public.notes`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var id, title string
	if _, err := pgx.ForEachRow(rows, []any{&id, &title}, func() error { out[id] = title; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// recordedEncoding is the encoding r's replicator recorded ("" before it
// recorded one).
func recordedEncoding(ctx context.Context, r *Region) string {
	conn, err := r.Conn(ctx)
	if err != nil {
		return ""
	}
	defer conn.Close(context.Background())
	var enc string
	_ = conn.QueryRow(ctx, `SELECT encoding FROM polyregion.text_encoding`).Scan(&enc)
	return enc
}
