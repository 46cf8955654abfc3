package postgres

// Barriers for some keys: an applier that writes a version for a key whose
// row it found absent waits until every local write to that key committed
// before then is versioned (a local insert and delete the reader has not
// versioned yet may hide behind the absent row). A plain barrier makes the
// reader version everything it has decoded first: at a light rate that is
// a persist transaction, and an outbox entry shipped to every peer, per
// applied batch instead of per FlushInterval, and every peer's appliers
// then apply smaller batches, each with its own barriers. A key barrier
// names its keys: the reader passes it without versioning anything when no
// local transaction it holds unversioned writes one of them. Every commit
// before the barrier has been decoded when the reader reaches it, so the
// unversioned local writes before it are exactly the ones it holds.

import (
	"context"
	"encoding/binary"
	"errors"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// KeyBarrierPrefix is the logical message prefix of key barriers.
const KeyBarrierPrefix = "polyregion.barrier-keys"

// keyBarrierMaxBytes bounds a key barrier's content: a barrier for more
// keys is a plain one (a batch that large versions more than it waits).
const keyBarrierMaxBytes = 16 << 10

// keyBarrier is a key barrier's content: the token its waiter registered
// and the keys.
type keyBarrier struct {
	token uint64
	keys  map[metaKey]bool
}

// encodeKeyBarrier writes a key barrier's content: the token, the number
// of keys, then each key as its table and key, length-prefixed. It returns
// nil when the content would pass keyBarrierMaxBytes.
func encodeKeyBarrier(token uint64, keys []metaKey) []byte {
	b := binary.BigEndian.AppendUint64(nil, token)
	b = binary.BigEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		if len(b)+8+len(k.tbl)+len(k.key) > keyBarrierMaxBytes {
			return nil
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(k.tbl)))
		b = append(b, k.tbl...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(k.key)))
		b = append(b, k.key...)
	}
	return b
}

// decodeKeyBarrier reads what encodeKeyBarrier wrote. What follows (the
// emitting transaction's id, see EmitKeyBarrier) is not read.
func decodeKeyBarrier(b []byte) (keyBarrier, error) {
	if len(b) < 12 {
		return keyBarrier{}, errors.New("key barrier: content too short")
	}
	kb := keyBarrier{token: binary.BigEndian.Uint64(b), keys: map[metaKey]bool{}}
	n := binary.BigEndian.Uint32(b[8:])
	b = b[12:]
	field := func() (string, bool) {
		if len(b) < 4 {
			return "", false
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(len(b)-4) < uint64(n) {
			return "", false
		}
		s := string(b[4 : 4+n])
		b = b[4+n:]
		return s, true
	}
	for range n {
		tbl, ok := field()
		if !ok {
			return keyBarrier{}, errors.New("key barrier: truncated table")
		}
		key, ok := field()
		if !ok {
			return keyBarrier{}, errors.New("key barrier: truncated key")
		}
		kb.keys[metaKey{tbl, key}] = true
	}
	return kb, nil
}

// EmitKeyBarrier is EmitBarrier for a waiter that needs only some keys of
// table versioned (each as Shape.KeyOf gives it): token is what
// Reader.ExpectBarrier returned.
func EmitKeyBarrier(ctx context.Context, conn *pgx.Conn, token uint64, table string, keys ...string) (pglogrepl.LSN, error) {
	mks := make([]metaKey, len(keys))
	for i, k := range keys {
		mks[i] = metaKey{table, k}
	}
	return emitKeyBarrier(ctx, conn, token, mks)
}

// emitKeyBarrier emits a key barrier for keys; for none, or too many, a
// plain barrier.
func emitKeyBarrier(ctx context.Context, conn *pgx.Conn, token uint64, keys []metaKey) (pglogrepl.LSN, error) {
	content := encodeKeyBarrier(token, keys)
	if content == nil || len(keys) == 0 {
		return EmitBarrier(ctx, conn)
	}
	return emitBarrierWith(ctx, conn, KeyBarrierPrefix, content)
}

// ExpectBarrier registers a key barrier about to be emitted and returns its
// token; done forgets it (after WaitBarrier, whatever its outcome). Tokens
// are unique within the process only (see WaitBarrier).
func (r *Reader) ExpectBarrier() (token uint64, done func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastToken++
	token = r.lastToken
	if r.barriers == nil {
		r.barriers = map[uint64]pglogrepl.LSN{}
	}
	r.barriers[token] = 0
	return token, func() {
		r.mu.Lock()
		delete(r.barriers, token)
		r.mu.Unlock()
	}
}

// WaitBarrier blocks until the reader has passed the key barrier token
// emitted at lsn: every local write to its keys committed before it is
// versioned. A barrier of the same token passed before lsn is another's:
// one emitted before a restart (tokens start again with the process) and
// decoded again after it.
func (r *Reader) WaitBarrier(ctx context.Context, lsn pglogrepl.LSN, token uint64) error {
	return r.waitUntil(ctx, lsn, func() bool { return r.versioned >= lsn || r.barriers[token] >= lsn })
}

// passBarrier records that the reader passed the key barrier token at lsn
// and wakes its waiter (a token no longer registered is one whose waiter
// gave up).
func (r *Reader) passBarrier(token uint64, lsn pglogrepl.LSN) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if at, ok := r.barriers[token]; !ok || at >= lsn {
		return
	}
	r.barriers[token] = lsn
	close(r.changed)
	r.changed = make(chan struct{})
}

// holdsUnversioned reports whether a local transaction the session holds
// decoded and not versioned yet writes one of keys. A transaction being
// decoded or versioned in parts counts as writing every key.
func (s *readSession) holdsUnversioned(keys map[metaKey]bool) bool {
	if s.cur != nil || s.bigTx != nil {
		return true
	}
	for _, batch := range [][]*pendingTxn{s.inflightBatch, s.batch} {
		for _, t := range batch {
			for i := range t.changes {
				if keys[metaKey{t.changes[i].rel.name, t.changes[i].key}] {
					return true
				}
			}
		}
	}
	return false
}
