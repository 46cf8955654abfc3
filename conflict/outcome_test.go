package conflict

import "testing"

func TestOutcome(t *testing.T) {
	p := Policy{Counters: []string{"hits"}, Max: []string{"seen"}, Deletes: DeleteWins}
	unchanged := map[string]any{"unchanged_toast": true}
	row := func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name          string
		k             Kind
		winner, loser map[string]any
		want          Outcome
	}{
		{"both deleted", DeleteDelete, nil, nil, Merged},
		{"update lost to a delete", UpdateDelete, nil, row("id", "1"), Overwritten},
		{"delete lost to an update", DeleteUpdate, row("id", "1"), nil, Overwritten},
		{"same values", UpdateUpdate, row("id", "1", "name", "x", "note", nil), row("id", "1", "name", "x", "note", nil), Merged},
		{"a value differs", UpdateUpdate, row("id", "1", "name", "x"), row("id", "1", "name", "y"), Overwritten},
		{"NULL against a value", UpdateUpdate, row("id", "1", "name", "x"), row("id", "1", "name", nil), Overwritten},
		{"only merged columns differ", InsertInsert, row("id", "1", "hits", "5", "seen", "2026-01-02"), row("id", "1", "hits", "3", "seen", "2026-01-01"), Merged},
		{"the loser did not send a column", UpdateUpdate, row("id", "1", "body", "a"), row("id", "1", "body", unchanged), Merged},
		{"the winner's value is not known", UpdateUpdate, row("id", "1", "body", unchanged), row("id", "1", "body", "b"), Overwritten},
		{"the winner lacks the column", UpdateUpdate, row("id", "1"), row("id", "1", "name", "x"), Overwritten},
		{"no local image", UpdateUpdate, nil, row("id", "1"), Overwritten},
	}
	for _, tt := range tests {
		if got := p.Outcome(tt.k, tt.winner, tt.loser); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}
