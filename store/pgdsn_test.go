package store_test

import (
	"strings"
	"testing"

	"hsmkms/store"
)

func TestCheckPostgresTransport(t *testing.T) {
	t.Setenv("PGSSLMODE", "")
	ok := []struct {
		dsn      string
		verifyCA bool
	}{
		{"postgres://kmsd@db.example:5432/kms?sslmode=verify-full", false},
		{"host=db.example user=kmsd dbname=kms sslmode=verify-full", false},
		{"postgres://kmsd@db.example/kms?sslmode=verify-ca", true},
		{"postgres://kmsd@127.0.0.1:5432/kms?sslmode=disable", false},
		{"postgres://kmsd@localhost/kms", false},
		{"postgres://kmsd@[::1]:5432/kms?sslmode=prefer", false},
		{"host=/var/run/postgresql user=kmsd dbname=kms", false},
		{"postgres://kmsd@db1.example,db2.example/kms?sslmode=verify-full", false},
	}
	for _, c := range ok {
		if err := store.CheckPostgresTransport(c.dsn, c.verifyCA); err != nil {
			t.Errorf("%s: %v", c.dsn, err)
		}
	}
	bad := []struct {
		dsn, want string
		verifyCA  bool
	}{
		{"postgres://kmsd:s3cret@db.example:5432/kms", "sslmode=prefer does not authenticate", false},
		{"postgres://kmsd@db.example/kms?sslmode=require", "sslmode=require", false},
		{"postgres://kmsd@db.example/kms?sslmode=disable", "sslmode=disable", false},
		{"host=10.0.0.5 user=kmsd dbname=kms sslmode=prefer", "10.0.0.5", false},
		{"postgres://kmsd@db.example/kms?sslmode=verify-ca", "allow_verify_ca", false},
		{"postgres://kmsd@localhost,db.example/kms?sslmode=require", "db.example", false},
	}
	for _, c := range bad {
		err := store.CheckPostgresTransport(c.dsn, c.verifyCA)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error mentioning %q", c.dsn, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: the error shows the password: %v", c.dsn, err)
		}
	}
	// PGSSLMODE applies when the DSN says nothing, as in pgx.
	t.Setenv("PGSSLMODE", "verify-full")
	if err := store.CheckPostgresTransport("postgres://kmsd@db.example/kms", false); err != nil {
		t.Errorf("PGSSLMODE=verify-full: %v", err)
	}
}
