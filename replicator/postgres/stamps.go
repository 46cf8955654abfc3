package postgres

// Column stamps (column-level last-writer-wins, see the conflict
// package): stored with a row's version in row_version.stamps and with each
// sibling; the reader stamps a local update's unchanged columns with what
// they had (the applier's join is in apply_columns.go).

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

// parseStamps reads row_version.stamps (nil or a JSON object).
func parseStamps(raw []byte) (map[string]conflict.Stamp, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var out map[string]conflict.Stamp
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("column stamps: %w", err)
	}
	return out, nil
}

// encodeStamps is the row_version.stamps value of a version (nil when
// every column carries the version's own stamp).
func encodeStamps(st map[string]conflict.Stamp) *string {
	if len(st) == 0 {
		return nil
	}
	b, _ := json.Marshal(st)
	s := string(b)
	return &s
}

// CheckColumnStamps refuses a column_lww table whose updates do not carry
// the old row in the change stream (REPLICA IDENTITY FULL): without it the
// reader cannot tell which columns an update changed.
func CheckColumnStamps(ctx context.Context, conn *pgx.Conn, tables []regions.Table) error {
	for _, t := range tables {
		if !t.Policy.ColumnLWW() {
			continue
		}
		full, err := identityFull(ctx, conn, t.Name)
		if err != nil {
			return err
		}
		if !full {
			return fmt.Errorf("table %s: columns: %s needs REPLICA IDENTITY FULL (updates must carry the old row for the replicator to tell which columns they changed); run ALTER TABLE %s REPLICA IDENTITY FULL in every region",
				t.Name, conflict.ColumnLWW, qualified(t.Name))
		}
	}
	return nil
}
