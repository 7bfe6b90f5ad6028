package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
)

// Resource tags.
//
// A key's tags live in the key_tags table, one row per (key, tag key).
// They are part of the key's metadata: CreateKey and UpdateKey write them
// in the same transaction as the key row, and GetKey and ListKeys read them
// from the same snapshot, so the key row's MAC (computed by the service
// over the key's fields and its tags) covers them: a tag row added,
// changed or removed outside the service makes the key fail its check.
// The store checks only what the schema needs (non-empty, distinct tag
// keys); the limits Tencent documents are the service's (kms/tags.go).

// Tag is one resource tag of a key.
type Tag struct {
	Key   string // non-empty, unique per key
	Value string // may be empty
}

// validateTags checks that tags have non-empty, distinct keys.
func validateTags(tags []Tag) error {
	seen := make(map[string]bool, len(tags))
	for _, t := range tags {
		if t.Key == "" {
			return errors.New("invalid key: empty tag key")
		}
		if seen[t.Key] {
			return fmt.Errorf("invalid key: duplicate tag key %q", t.Key)
		}
		seen[t.Key] = true
	}
	return nil
}

// sortTags orders tags by key (the order GetKey and ListKeys return).
func sortTags(tags []Tag) {
	sort.Slice(tags, func(i, j int) bool { return tags[i].Key < tags[j].Key })
}

// tagRows is what collectTags needs of a query's rows: *sql.Rows and
// pgx.Rows both have it.
type tagRows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// collectTags appends the tags of rows (key_id, tag_key, tag_value) to the
// keys in keys (by index of their id), or to keys[0] if index is nil, then
// sorts each key's tags bytewise, whatever the engine's collation. The
// caller closes rows.
func collectTags(rows tagRows, keys []Key, index map[string]int) error {
	for rows.Next() {
		var (
			keyID string
			t     Tag
		)
		if err := rows.Scan(&keyID, &t.Key, &t.Value); err != nil {
			return fmt.Errorf("tags: %w", err)
		}
		i := 0
		if index != nil {
			var ok bool
			if i, ok = index[keyID]; !ok { // impossible with foreign keys on; be defensive
				return fmt.Errorf("tag %q of unknown key %s", t.Key, keyID)
			}
		}
		keys[i].Tags = append(keys[i].Tags, t)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	for i := range keys {
		sortTags(keys[i].Tags)
	}
	return nil
}

// sqliteReplaceTags makes the tags of key id exactly tags, inside tx.
func sqliteReplaceTags(ctx context.Context, tx *sql.Tx, id string, tags []Tag) error {
	if err := validateTags(tags); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM key_tags WHERE key_id = ?`, id); err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	for _, t := range tags {
		if _, err := tx.ExecContext(ctx, `INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES (?, ?, ?)`, id, t.Key, t.Value); err != nil {
			return fmt.Errorf("tag %q: %w", t.Key, err)
		}
	}
	return nil
}

// sqliteLoadTags reads the tags of the keys in keys (by index of their
// id), or of the one key id if index is nil, inside tx.
func sqliteLoadTags(ctx context.Context, tx *sql.Tx, keys []Key, index map[string]int) error {
	var (
		rows *sql.Rows
		err  error
	)
	if index == nil {
		rows, err = tx.QueryContext(ctx, `SELECT key_id, tag_key, tag_value FROM key_tags WHERE key_id = ? ORDER BY tag_key`, keys[0].ID)
	} else {
		rows, err = tx.QueryContext(ctx, `SELECT key_id, tag_key, tag_value FROM key_tags ORDER BY key_id, tag_key`)
	}
	if err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	defer rows.Close()
	return collectTags(rows, keys, index)
}
