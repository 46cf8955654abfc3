package postgres

// Decoding pgoutput messages into a transaction's changes: relations,
// tuples (unchanged TOASTed values filled from the row's last image) and
// TRUNCATE captured as deletes.

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// relation builds a table's shape as the stream describes it at this point
// (columns and types from the relation message, so transactions decoded
// from before a DDL keep their own columns) and its key from the catalog's
// primary key.
func (r *Reader) relation(ctx context.Context, conn *pgx.Conn, msg *pglogrepl.RelationMessage) (*relation, error) {
	name := msg.Namespace + "." + msg.RelationName
	if _, ok := r.tables[name]; !ok {
		// Not replicated: only its name is needed (to skip its changes).
		return &relation{msg: msg, name: name}, nil
	}
	sh, err := StreamShape(ctx, conn, msg)
	if err != nil {
		return nil, fmt.Errorf("reader: %w", err)
	}
	return &relation{msg: msg, name: name, shape: sh, keyLogged: identityLogsKey(msg, sh.Key)}, nil
}

func tupleValues(rel *relation, t *pglogrepl.TupleData) []replicator.Value {
	return TupleValues(len(rel.shape.Columns), t)
}

// TupleValues converts a stream tuple of a relation with n columns to values
// in text form: SQL NULL as Null, an unchanged TOASTed value as Unchanged.
// Columns the tuple lacks are NULL.
func TupleValues(n int, t *pglogrepl.TupleData) []replicator.Value {
	vals := make([]replicator.Value, n)
	for i := range vals {
		vals[i].Null = true
	}
	if t == nil {
		return vals
	}
	for i, c := range t.Columns {
		if i >= n {
			break
		}
		v := &vals[i]
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			*v = replicator.Value{Null: true}
		case pglogrepl.TupleDataTypeToast:
			*v = replicator.Value{Unchanged: true}
		default:
			*v = replicator.Value{Text: string(c.Data)}
		}
	}
	return vals
}

// fillUnchanged gives an update's unchanged TOASTed values from the full
// old row (REPLICA IDENTITY FULL logs it, detoasted). Shipped whole, such
// an update can win a conflict in a region whose concurrent version holds
// a different value for the untouched column and still converge; shipped
// as "unchanged" it would leave that region's value in place.
func fillUnchanged(newT, oldT *pglogrepl.TupleData) {
	if newT == nil || oldT == nil {
		return
	}
	for i, c := range newT.Columns {
		if c.DataType == pglogrepl.TupleDataTypeToast && i < len(oldT.Columns) && oldT.Columns[i].DataType != pglogrepl.TupleDataTypeToast {
			newT.Columns[i] = oldT.Columns[i]
		}
	}
}

// oldKeyHint says why an old row may lack its key: a replica identity
// changed after the replicator checked it at start (see
// replica_identity.go).
const oldKeyHint = "the WAL's old row lacks the primary key: set the table's REPLICA IDENTITY to DEFAULT or FULL; a change already in the WAL without its key cannot be shipped, and the region must then be re-seeded from a peer (region reseed)"

func (r *Reader) addChange(cur *pendingTxn, rels map[uint32]*relation, relID uint32, op conflict.Op, newT, oldT *pglogrepl.TupleData) error {
	if cur == nil {
		return fmt.Errorf("reader: row change outside a transaction")
	}
	if cur.remote {
		return nil
	}
	rel := rels[relID]
	if rel == nil {
		return fmt.Errorf("reader: change for unknown relation %d", relID)
	}
	if _, ok := r.tables[rel.name]; !ok {
		return nil
	}
	if op != conflict.OpInsert && !rel.keyLogged {
		return fmt.Errorf("reader: %s of %s: its replica identity does not log the primary key (%s)", op, rel.name, oldKeyHint)
	}
	switch op {
	case conflict.OpDelete:
		key, err := rel.shape.KeyOf(tupleValues(rel, oldT))
		if err != nil {
			return fmt.Errorf("reader: delete from %s: %w (%s)", rel.name, err, oldKeyHint)
		}
		cur.changes = append(cur.changes, rawChange{rel: rel, op: op, key: key})
	default:
		row := tupleValues(rel, newT)
		key, err := rel.shape.KeyOf(row)
		if err != nil {
			return fmt.Errorf("reader: %s: %w", op, err)
		}
		if op == conflict.OpUpdate && oldT != nil {
			// The primary key changed: the old key is deleted and the new
			// one written.
			oldKey, err := rel.shape.KeyOf(tupleValues(rel, oldT))
			if err != nil {
				return fmt.Errorf("reader: update of %s: old row: %w (%s)", rel.name, err, oldKeyHint)
			}
			if oldKey != key {
				cur.changes = append(cur.changes, rawChange{rel: rel, op: conflict.OpDelete, key: oldKey})
				op = conflict.OpInsert
			}
		}
		ch := rawChange{rel: rel, op: op, key: key, row: row}
		if op == conflict.OpUpdate && oldT != nil {
			ch.old = tupleValues(rel, oldT)
		}
		cur.changes = append(cur.changes, ch)
	}
	return nil
}

// addTruncated turns one part of a TRUNCATE capture ("table\n" and a JSON
// array of key value arrays, see polyregion.capture_truncate) into deletes
// of the current transaction.
func (r *Reader) addTruncated(ctx context.Context, conn *pgx.Conn, cur *pendingTxn, rels map[uint32]*relation, content []byte) error {
	// The capture comes before the TRUNCATE itself.
	rel, body, err := r.messageTable(ctx, conn, cur, rels, content, "TRUNCATE capture")
	if rel == nil || err != nil {
		return err
	}
	name := rel.name
	var keys [][]string
	if err := json.Unmarshal([]byte(body), &keys); err != nil {
		return fmt.Errorf("reader: malformed TRUNCATE capture of %s in transaction %d: %w", name, cur.xid, err)
	}
	for _, parts := range keys {
		if len(parts) != len(rel.shape.Key) {
			return fmt.Errorf("reader: TRUNCATE capture of %s carries %d key values, the table's key has %d columns", name, len(parts), len(rel.shape.Key))
		}
		key, err := json.Marshal(parts)
		if err != nil {
			return err
		}
		cur.changes = append(cur.changes, rawChange{rel: rel, op: conflict.OpDelete, key: string(key)})
	}
	if cur.truncated == nil {
		cur.truncated = map[string]bool{}
	}
	cur.truncated[name] = true
	return nil
}

// messageTable reads the table a transactional message of a local
// transaction is about ("table\n" and a body): its relation and the body,
// or a nil relation when the message is to be left alone (a transaction
// applied from a peer, a table not replicated). what names the message in
// errors.
func (r *Reader) messageTable(ctx context.Context, conn *pgx.Conn, cur *pendingTxn, rels map[uint32]*relation, content []byte, what string) (*relation, string, error) {
	if cur == nil {
		return nil, "", fmt.Errorf("reader: %s outside a transaction", what)
	}
	if cur.remote {
		return nil, "", nil
	}
	name, body, ok := strings.Cut(string(content), "\n")
	if !ok {
		return nil, "", fmt.Errorf("reader: malformed %s (no table name) in transaction %d", what, cur.xid)
	}
	if _, ok := r.tables[name]; !ok {
		return nil, "", nil
	}
	rel, err := r.relationOf(ctx, conn, rels, name)
	if err != nil {
		return nil, "", fmt.Errorf("reader: %s of %s: %w", what, name, err)
	}
	return rel, body, nil
}

// relationOf returns the replicated table name as the stream last
// described it, or from the catalog when the stream has not described it
// yet (it does before a table's first change: a message about the table
// can come earlier).
func (r *Reader) relationOf(ctx context.Context, conn *pgx.Conn, rels map[uint32]*relation, name string) (*relation, error) {
	for _, c := range rels {
		if c.name == name && len(c.shape.Columns) > 0 {
			return c, nil
		}
	}
	sh, err := LoadShape(ctx, conn, name)
	if err != nil {
		return nil, err
	}
	return &relation{name: name, shape: sh, keyLogged: true}, nil // its changes carry their keys
}

// skippableRowMessage reports whether a pgoutput message is a row change
// (insert, update or delete), which a transaction the reader does not
// version can skip undecoded.
func skippableRowMessage(data []byte) bool {
	if len(data) == 0 {
		return false
	}
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete:
		return true
	}
	return false
}
