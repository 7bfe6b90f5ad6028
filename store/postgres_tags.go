package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// pgReplaceTags makes the tags of key id exactly tags, inside tx (see
// sqlite_tags.go).
func pgReplaceTags(ctx context.Context, tx pgx.Tx, id string, tags []Tag) error {
	if err := validateTags(tags); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM key_tags WHERE key_id = $1`, id); err != nil {
		return fmt.Errorf("tags: %w", classify(err))
	}
	for _, t := range tags {
		if _, err := tx.Exec(ctx, `INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES ($1, $2, $3)`, id, t.Key, t.Value); err != nil {
			return fmt.Errorf("tag %q: %w", t.Key, classify(err))
		}
	}
	return nil
}

// pgLoadTags reads the tags of the keys in keys (by index of their id),
// or of the one key keys[0] if index is nil, inside tx.
func pgLoadTags(ctx context.Context, tx pgx.Tx, keys []Key, index map[string]int) error {
	var (
		rows pgx.Rows
		err  error
	)
	if index == nil {
		rows, err = tx.Query(ctx, `SELECT key_id, tag_key, tag_value FROM key_tags WHERE key_id = $1 ORDER BY tag_key`, keys[0].ID)
	} else {
		rows, err = tx.Query(ctx, `SELECT key_id, tag_key, tag_value FROM key_tags ORDER BY key_id, tag_key`)
	}
	if err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	defer rows.Close()
	return collectTags(rows, keys, index)
}
