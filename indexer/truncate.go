package indexer

import "context"

// truncate empties an indexed table's index for a TRUNCATE, as a delete of
// every document at the truncating transaction's version: the same rule as
// every other write (external_gte), so a document a later transaction
// wrote (met again when the stream replays the TRUNCATE) is kept, and the
// documents the transaction itself writes after its TRUNCATE, at its own
// version, are not refused on a replay. (The engines' _delete_by_query
// would version each delete one above the document it removes, which the
// replayed writes then lose to; and it sees only refreshed documents.)
//
// What is batched is written first and the index refreshed, so the scan
// sees every document; the deletes go through the batch like any change
// (written every BatchDocs, also while the scan goes on), so the memory is
// bounded whatever the index's size.
func (s *streamer) truncate(ctx context.Context, table string, t indexTarget) error {
	if err := s.flush(ctx); err != nil {
		return err
	}
	if err := s.f.be.Refresh(ctx, t.phys); err != nil {
		return err
	}
	version := int64(s.txnLSN)
	n := 0
	err := s.f.be.ScanIDs(ctx, t.phys, func(id string) error {
		n++
		return s.add(ctx, Op{Index: t.phys, ID: id, Version: version, Delete: true, Table: table})
	})
	if err != nil {
		return err
	}
	s.f.cfg.Logger.Info("index emptied by TRUNCATE", "table", table, "index", t.spec.Index, "documents", n)
	return nil
}
