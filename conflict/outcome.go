package conflict

// Outcome says what a conflict cost the write that lost it.
type Outcome string

// Outcomes.
const (
	// Overwritten: some of the losing write's data is gone (a value it set
	// that the row does not hold, its delete, or its row when a delete won).
	Overwritten Outcome = "overwritten"
	// Merged: nothing of the losing write is gone. Both writes deleted the
	// row, or every column it set holds its value anyway: the winner set
	// the same value, or the column merges (a counter, max or min column).
	Merged Outcome = "merged"
)

// Outcome is what a conflict of kind k cost its losing write under p,
// given the two writes' rows as conflict records hold them: column -> text
// value (nil for NULL), a column the write did not send as
// {"unchanged_toast": true}; a nil map when the row is not known. A value
// that cannot be compared counts as lost.
func (p Policy) Outcome(k Kind, winner, loser map[string]any) Outcome {
	switch k {
	case DeleteDelete:
		return Merged
	case UpdateDelete, DeleteUpdate:
		return Overwritten
	}
	if winner == nil || loser == nil {
		return Overwritten
	}
	for col, lv := range loser {
		if p.Merge(col) != "" || unsent(lv) {
			continue
		}
		wv, ok := winner[col]
		if !ok || unsent(wv) {
			return Overwritten
		}
		ls, lok := lv.(string)
		ws, wok := wv.(string)
		switch {
		case lv == nil && wv == nil:
		case lok && wok && ls == ws:
		default:
			return Overwritten
		}
	}
	return Merged
}

// unsent reports whether a row image's value stands for a column the write
// did not send (an unchanged TOAST value).
func unsent(v any) bool {
	m, ok := v.(map[string]any)
	return ok && m["unchanged_toast"] == true
}
