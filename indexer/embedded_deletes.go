package indexer

// A deleted document keeps its version in the embedded store for
// deletedVersionsKept, so that a write older than the delete arriving after
// it is still refused, as Elasticsearch and OpenSearch keep theirs for
// index.gc_deletes (60 s by default). Past that the version is dropped:
// without it, the store grew with every document ever deleted. The feed
// writes an index in commit order, and a replay (after a restart, or a
// rebuild's catch-up) replays a delete after every older write of its
// document, so only a write older than the delete by more than the window
// and arriving after it alone could bring the document back; none does.

import (
	"bytes"
	"encoding/binary"
	"time"

	"go.etcd.io/bbolt"
)

// deletedVersionsKept is how long a deleted document's version is kept.
const deletedVersionsKept = time.Hour

// purgePerBatch bounds the expired versions one batch drops, so that a
// backlog of them (an upgraded store, a mass delete an hour ago) is worked
// off across batches, not in one long store transaction.
const purgePerBatch = 2000

// bucketDeleted lists deletions in time order: key the deletion time (unix
// nanoseconds, big-endian) followed by the document id, value the version
// deleted at.
var bucketDeleted = []byte("deleted")

func deletedKey(at time.Time, id []byte) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(at.UnixNano()))
	return append(k, id...)
}

// noteDeleted records in tx that id was deleted at version (8 bytes) at
// time at.
func noteDeleted(tx *bbolt.Tx, at time.Time, id, version []byte) error {
	return tx.Bucket(bucketDeleted).Put(deletedKey(at, id), version)
}

// purgeDeleted drops in tx the versions of up to limit documents deleted
// before cutoff, each only if the document was not written since (its
// source absent, its version the one deleted at).
func purgeDeleted(tx *bbolt.Tx, cutoff time.Time, limit int) error {
	db, vb, sb := tx.Bucket(bucketDeleted), tx.Bucket(bucketVersion), tx.Bucket(bucketSource)
	var done [][]byte
	c := db.Cursor()
	for k, v := c.First(); k != nil && len(done) < limit; k, v = c.Next() {
		if len(k) < 8 || int64(binary.BigEndian.Uint64(k[:8])) >= cutoff.UnixNano() {
			break
		}
		id := k[8:]
		if sb.Get(id) == nil && bytes.Equal(vb.Get(id), v) {
			if err := vb.Delete(id); err != nil {
				return err
			}
		}
		done = append(done, bytes.Clone(k))
	}
	for _, k := range done {
		if err := db.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// listDeleted fills bucketDeleted in a store written before it existed:
// every version without a source is a deletion, taken as made at.
func listDeleted(tx *bbolt.Tx, at time.Time) error {
	if tx.Bucket(bucketDeleted) != nil {
		return nil
	}
	db, err := tx.CreateBucket(bucketDeleted)
	if err != nil {
		return err
	}
	sb := tx.Bucket(bucketSource)
	return tx.Bucket(bucketVersion).ForEach(func(id, v []byte) error {
		if sb.Get(id) != nil {
			return nil
		}
		return db.Put(deletedKey(at, id), bytes.Clone(v))
	})
}
