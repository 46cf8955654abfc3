package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"time"
)

// randomLogs makes the records several regions log for random conflicts:
// few tables, keys and writes (so conflicts share rows and writes), each
// pair logged by one to three regions from their own side, with times that
// tie, outcomes of every kind and now and then a region naming the other
// winner.
func randomLogs(rng *rand.Rand) []Record {
	regs := []string{"us", "eu", "ap"}
	nextID := map[string]int64{}
	var writes []write
	for i := range 2 + rng.Intn(10) {
		o := regs[rng.Intn(len(regs))]
		row := fmt.Sprintf(`{"n": "%d"}`, i)
		if rng.Intn(5) == 0 {
			row = "" // a delete
		}
		writes = append(writes, write{o, fmt.Sprintf("%s:%d", o, 1+rng.Intn(4)), hlc(t0.Add(time.Duration(rng.Intn(5))*time.Second), uint16(rng.Intn(3))), row})
	}
	var recs []Record
	for range rng.Intn(60) {
		x, y := writes[rng.Intn(len(writes))], writes[rng.Intn(len(writes))]
		tbl := []string{"public.kv", "public.orders"}[rng.Intn(2)]
		key := fmt.Sprintf(`["%d"]`, rng.Intn(4))
		winner := []string{"local", "remote"}[rng.Intn(2)]
		outcome := []string{"", "overwritten", "merged"}[rng.Intn(3)]
		at := t0.Add(time.Duration(rng.Intn(7200)) * time.Second)
		for _, reg := range regs[:1+rng.Intn(3)] {
			local, remote, win := x, y, winner
			if rng.Intn(2) == 0 {
				local, remote = y, x
				win = map[string]string{"local": "remote", "remote": "local"}[winner]
			}
			if rng.Intn(12) == 0 {
				win = map[string]string{"local": "remote", "remote": "local"}[win] // disputed
			}
			nextID[reg]++
			r := logged(nextID[reg], reg, at.Add(time.Duration(rng.Intn(3))*time.Second), tbl, key, "update_update", local, remote, win)
			r.Outcome = outcome
			recs = append(recs, r)
		}
	}
	rng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
	return recs
}

func randomFilters(rng *rand.Rand) Filters {
	var f Filters
	if rng.Intn(3) == 0 {
		f.Since = t0.Add(time.Duration(rng.Intn(3600)) * time.Second)
	}
	if rng.Intn(3) == 0 {
		f.Until = t0.Add(time.Duration(3601+rng.Intn(3600)) * time.Second)
	}
	switch rng.Intn(5) {
	case 0:
		f.Table = "public.kv"
	case 1:
		f.Region = "eu"
	case 2:
		f.Pair = "eu-us"
	}
	f.Limit = []int{0, 0, 1, 3, 10}[rng.Intn(5)]
	return f
}

// The report built in one pass over records in identity order is the
// report built from all the records in memory, for random logs, filters
// and limits.
func TestStreamingBuildMatchesTheWholeLogBuild(t *testing.T) {
	for seed := range int64(3000) {
		rng := rand.New(rand.NewSource(seed))
		recs := randomLogs(rng)
		f := randomFilters(rng)
		now := t0.Add(3 * time.Hour)
		got, want := Build(recs, f, now), refBuild(recs, f, now)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("seed %d, filters %+v:\ngot  %+v\nwant %+v", seed, f, got, want)
		}
	}
}

// imageless is a source that yields its records without row images, as a
// database does, and counts the images asked for.
type imageless struct {
	recs  Records
	asked *int
}

func (s imageless) Records(ctx context.Context, f Filters) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		for r, err := range s.recs.Records(ctx, f) {
			r.LocalRow, r.RemoteRow = nil, nil
			if !yield(r, err) {
				return
			}
		}
	}
}

func (s imageless) Images(_ context.Context, ids []int64) (map[int64]Images, error) {
	*s.asked += len(ids)
	out := map[int64]Images{}
	for _, r := range s.recs {
		out[r.ID] = Images{Local: r.LocalRow, Remote: r.RemoteRow}
	}
	return out, nil
}

// Regions' logs read together through Read, each yielding its records
// without row images: the report is the whole log's, and only the rows it
// lists had their images read.
func TestReadMergesSourcesAndReadsImagesOfListedRowsOnly(t *testing.T) {
	for seed := range int64(500) {
		rng := rand.New(rand.NewSource(seed))
		recs := randomLogs(rng)
		f := randomFilters(rng)
		now := t0.Add(3 * time.Hour)
		byRegion := map[string]Records{}
		for _, r := range recs {
			byRegion[r.Region] = append(byRegion[r.Region], r)
		}
		var src Sources
		asked := 0
		for _, reg := range []string{"ap", "eu", "us"} {
			src = append(src, imageless{byRegion[reg], &asked})
		}
		got, err := Read(context.Background(), src, f, now)
		if err != nil {
			t.Fatal(err)
		}
		if want := refBuild(recs, f, now); !reflect.DeepEqual(got, want) {
			t.Fatalf("seed %d, filters %+v:\ngot  %+v\nwant %+v", seed, f, got, want)
		}
		if asked != len(got.Rows) {
			t.Fatalf("seed %d: images of %d records read for %d rows listed", seed, asked, len(got.Rows))
		}
	}
}

// A source that breaks the identity order gets an error, not a report
// that counts a conflict twice.
func TestReadRefusesRecordsOutOfOrder(t *testing.T) {
	_, _, recs := onePairThreeLoggers()
	other := recs[0]
	other.Key = `["0"]`
	shuffled := unsorted{recs[0], other, recs[1]}
	_, err := Read(context.Background(), shuffled, Filters{}, t0)
	if err == nil || !strings.Contains(err.Error(), "out of order") {
		t.Fatalf("Read = %v, want an out-of-order error", err)
	}
}

type unsorted []Record

func (u unsorted) Records(context.Context, Filters) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		for _, r := range u {
			if !yield(r, nil) {
				return
			}
		}
	}
}

// The builder keeps no more detail rows than the limit, however many
// conflicts it reads.
func TestBuilderKeepsOnlyTheListedRows(t *testing.T) {
	recs := many(5000, 24*time.Hour)
	b := newBuilder(Filters{Limit: 7}, t0.Add(25*time.Hour))
	sorted := Records(recs)
	for r := range sorted.Records(context.Background(), Filters{}) {
		if err := b.add(read{Record: r}); err != nil {
			t.Fatal(err)
		}
		if len(b.details) > 7 {
			t.Fatalf("%d detail rows held, limit 7", len(b.details))
		}
	}
	rep, details := b.finish()
	if len(details) != 7 || rep.RowsOmitted != 5000-7 || rep.Summary.Total != 5000 {
		t.Fatalf("%d rows, %d omitted, %d total", len(details), rep.RowsOmitted, rep.Summary.Total)
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Fatal(err)
	}
}
