package main_test

// Someone who can write the metadata database: each edit of a
// security-relevant row, made while kmsd is stopped (SQLite) or while it
// runs (PostgreSQL), is detected through the real server and not obeyed;
// an administrator's `kmsd reseal` makes a checked row count again.

import (
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite"

	"hsmkms/hsm/p11"
	"hsmkms/softhsm"
)

const (
	encOnlyPolicy = `{"version":"2.0","statement":[{"effect":"allow","action":["kms:Encrypt"],"resource":["*"]}]}`
	allPolicy     = `{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]}`
)

// credential creates a credential through the API and returns its SecretId and SecretKey.
func (s *server) credential(t *testing.T, name, policy string) (string, string) {
	t.Helper()
	r := s.tc3(t, tc3Request{action: "CreateCredential", body: mustJSON(map[string]string{"Name": name, "Policy": policy})})
	if r.code() != "" {
		t.Fatalf("CreateCredential: %s", r.code())
	}
	return r.Response.SecretId, secret(r.Response.SecretKey)
}

// encryptCode is the error code of an Encrypt under keyID by the
// credential (id, key) ("" for success).
func (s *server) encryptCode(t *testing.T, keyID, id, key string) string {
	t.Helper()
	return s.tc3(t, tc3Request{action: "Encrypt", body: mustJSON(map[string]string{"KeyId": keyID, "Plaintext": b64("tamper test")}), id: id, key: key}).code()
}

func (s *server) admin(t *testing.T, action string, body map[string]string) {
	t.Helper()
	if r := s.tc3(t, tc3Request{action: action, body: mustJSON(body)}); r.code() != "" {
		t.Fatalf("%s: %s", action, r.code())
	}
}

// readyz returns /readyz's status code and body.
func (s *server) readyz(t *testing.T) (int, map[string]string) {
	t.Helper()
	resp, err := http.Get(s.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

// metric returns the value of an unlabelled metric from /metrics.
func (s *server) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("/metrics lacks %s", name)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// kmsdCmd runs a kmsd subcommand to completion.
func kmsdCmd(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "kmsd"), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	time.Sleep(100 * time.Millisecond) // SoftHSM2: processes opening one token directory at the same instant can fail
	return string(out), err
}

func execSQL(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	res, err := db.Exec(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("%s: %d rows", q, n)
	}
}

func TestTamperedSQLiteIsNotObeyed(t *testing.T) {
	s, tok, data := newServer(t)
	env := kmsdEnv(tok, data)
	encID, encKey := s.credential(t, "enconly", encOnlyPolicy)
	offID, offKey := s.credential(t, "off", allPolicy)
	s.admin(t, "DisableCredential", map[string]string{"SecretId": offID})
	untouched := s.createKey("untouched")
	disabled := s.createKey("disabled")
	s.admin(t, "DisableKey", map[string]string{"KeyId": disabled})
	doomed := s.createKey("doomed")
	s.admin(t, "DisableKey", map[string]string{"KeyId": doomed})
	if r := s.tc3(t, tc3Request{action: "ScheduleKeyDeletion", body: `{"KeyId":"` + doomed + `","PendingWindowInDays":7}`}); r.code() != "" {
		t.Fatalf("ScheduleKeyDeletion: %s", r.code())
	}
	objectKey := s.createKey("object")
	copied := s.createKey("copied")
	s.admin(t, "DisableKey", map[string]string{"KeyId": copied})
	if c := s.tc3(t, tc3Request{action: "ListCredentials", body: "{}", id: encID, key: encKey}).code(); c != "UnauthorizedOperation" {
		t.Fatalf("Encrypt-only credential lists credentials before tampering: %q", c)
	}
	s.stop()

	db, err := sql.Open("sqlite", filepath.Join(data, "kms.db"))
	if err != nil {
		t.Fatal(err)
	}
	execSQL(t, db, `UPDATE credentials SET policy = ? WHERE name = 'enconly'`, allPolicy)
	execSQL(t, db, `UPDATE credentials SET enabled = 1 WHERE name = 'off'`)
	execSQL(t, db, `UPDATE keys SET state = 'Enabled' WHERE id = ?`, disabled)
	execSQL(t, db, `UPDATE keys SET deletion_date = ? WHERE id = ?`, time.Now().Add(-time.Hour).UnixNano(), doomed)
	execSQL(t, db, `UPDATE key_versions SET object_id = CAST('hsmkms/credentials-kek/v1' AS BLOB) WHERE key_id = ?`, objectKey)
	execSQL(t, db, `UPDATE keys SET (state, gen, mac) = (SELECT state, gen, mac FROM keys WHERE id = ?) WHERE id = ?`, untouched, copied)
	db.Close()

	s = startKMSD(t, env)
	if c := s.tc3(t, tc3Request{action: "ListCredentials", body: "{}", id: encID, key: encKey}).code(); c != "AuthFailure.SecretIdNotFound" {
		t.Fatalf("credential with a tampered policy: %q, want AuthFailure.SecretIdNotFound", c)
	}
	if c := s.encryptCode(t, untouched, offID, offKey); c != "AuthFailure.SecretIdNotFound" {
		t.Fatalf("credential enabled in the database: %q, want AuthFailure.SecretIdNotFound", c)
	}
	for name, id := range map[string]string{"state": disabled, "deletion date": doomed, "object id": objectKey, "copied row": copied} {
		if c := s.encryptCode(t, id, adminID, adminKey); c != "ResourceUnavailable.CmkDisabled" {
			t.Errorf("%s: Encrypt %q, want ResourceUnavailable.CmkDisabled", name, c)
		}
		if r := s.tc3(t, tc3Request{action: "EnableKey", body: mustJSON(map[string]string{"KeyId": id})}); r.code() == "" {
			t.Errorf("%s: EnableKey of a tampered key succeeded", name)
		}
	}
	if c := s.encryptCode(t, untouched, adminID, adminKey); c != "" {
		t.Fatalf("untouched key: %q", c)
	}
	if code, body := s.readyz(t); code != http.StatusOK || body["status"] != "degraded" || body["integrity"] != "degraded" {
		t.Fatalf("/readyz %d %v, want 200 degraded", code, body)
	}
	if n := s.metric(t, "kmsd_integrity_failing_rows"); n != 6 {
		t.Fatalf("kmsd_integrity_failing_rows %v, want 6", n)
	}
	if n := s.metric(t, "kmsd_integrity_failures_total"); n != 6 {
		t.Fatalf("kmsd_integrity_failures_total %v, want 6", n)
	}
	logs := s.stderr.String()
	trail, err := os.ReadFile(filepath.Join(data, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{encID, offID, disabled, doomed, objectKey, copied} {
		if !strings.Contains(logs, "INTEGRITY CHECK FAILED") || !strings.Contains(logs, id) {
			t.Errorf("log does not name %s as failing its integrity check", id)
		}
		if !regexp.MustCompile(`"action":"IntegrityCheckFailed"[^\n]*` + id + `|` + id + `[^\n]*"action":"IntegrityCheckFailed"`).Match(trail) {
			t.Errorf("audit trail does not record the integrity failure of %s", id)
		}
	}
	// The maintenance pass ran at start: the doomed key was not purged,
	// and the credentials key (named by a version) still unseals the
	// credentials at the next start.
	if st := s.describe(t, doomed); st == "Deleted" {
		t.Fatal("key with a tampered deletion date was purged")
	}
	s.stop()

	// An administrator checks the rows, puts the key state back and
	// accepts the now enabled credential.
	db, _ = sql.Open("sqlite", filepath.Join(data, "kms.db"))
	execSQL(t, db, `UPDATE keys SET state = 'Disabled' WHERE id = ?`, disabled)
	db.Close()
	for _, args := range [][]string{{"-key", disabled}, {"-credential", offID}} {
		if out, err := kmsdCmd(t, env, append([]string{"reseal"}, args...)...); err != nil {
			t.Fatalf("kmsd reseal %v: %v\n%s", args, err, out)
		}
	}
	if out, err := kmsdCmd(t, env, "reseal", "-key", "00000000-0000-4000-8000-000000000000"); err == nil {
		t.Fatalf("reseal of an absent key succeeded: %s", out)
	}
	s = startKMSD(t, env)
	if c := s.encryptCode(t, untouched, offID, offKey); c != "" {
		t.Fatalf("resealed credential: %q", c)
	}
	if st := s.describe(t, disabled); st != "Disabled" {
		t.Fatalf("resealed key is %s", st)
	}
	s.admin(t, "EnableKey", map[string]string{"KeyId": disabled})
	if c := s.encryptCode(t, disabled, adminID, adminKey); c != "" {
		t.Fatalf("resealed key, enabled: %q", c)
	}
	if n := s.metric(t, "kmsd_integrity_failing_rows"); n != 4 {
		t.Fatalf("kmsd_integrity_failing_rows after two reseals %v, want 4", n)
	}
	trail, _ = os.ReadFile(filepath.Join(data, "audit.log"))
	for _, id := range []string{disabled, offID} {
		if !regexp.MustCompile(`"action":"Reseal"[^\n]*` + id + `|` + id + `[^\n]*"action":"Reseal"`).Match(trail) {
			t.Errorf("audit trail does not record the reseal of %s", id)
		}
	}
}

// describe returns a key's state.
func (s *server) describe(t *testing.T, keyID string) string {
	t.Helper()
	raw := s.api3Call("DescribeKey", mustJSON(map[string]string{"KeyId": keyID}))
	var r struct {
		Response struct {
			KeyMetadata struct{ KeyState string }
			Error       *struct{ Code string }
		}
	}
	if err := json.Unmarshal(raw, &r); err != nil || r.Response.Error != nil {
		t.Fatalf("DescribeKey: %s", raw)
	}
	return r.Response.KeyMetadata.KeyState
}

// TestUpgradeSQLite: a database and a token as the release before
// authenticated metadata left them (schema v3, no MAC key on the token)
// keep working after the upgrade: the MACs are computed once, at the first
// start, which says so.
func TestUpgradeSQLite(t *testing.T) {
	s, tok, data := newServer(t)
	env := kmsdEnv(tok, data)
	encID, encKey := s.credential(t, "app", encOnlyPolicy)
	key := s.createKey("old")
	blob := s.tc3(t, tc3Request{action: "Encrypt", body: mustJSON(map[string]string{"KeyId": key, "Plaintext": b64("before the upgrade")})}).Response.CiphertextBlob
	s.stop()

	downgradeSQLite(t, tok, data, nil)

	s = startKMSD(t, env)
	if !strings.Contains(s.stderr.String(), "upgrade: computed the MACs") {
		t.Fatalf("the upgrade did not say it sealed the rows:\n%s", s.stderr.String())
	}
	if !strings.Contains(s.stderr.String(), "the trail had no anchor in the store") {
		t.Fatalf("the upgrade did not anchor the existing audit trail:\n%s", s.stderr.String())
	}
	if code, body := s.readyz(t); code != http.StatusOK || body["status"] != "ready" {
		t.Fatalf("/readyz after an honest upgrade: %d %v", code, body)
	}
	r := s.tc3(t, tc3Request{action: "Decrypt", body: mustJSON(map[string]string{"CiphertextBlob": blob})})
	if r.code() != "" || r.Response.Plaintext != b64("before the upgrade") {
		t.Fatalf("Decrypt of a blob made before the upgrade: %s", r.code())
	}
	if c := s.encryptCode(t, key, encID, encKey); c != "" {
		t.Fatalf("credential made before the upgrade: %q", c)
	}
	s.stop()
	// Only once: the next start seals nothing.
	s = startKMSD(t, env)
	if strings.Contains(s.stderr.String(), "upgrade: computed the MACs") {
		t.Fatal("a second start sealed rows again")
	}
	if n := s.metric(t, "kmsd_integrity_failing_rows"); n != 0 {
		t.Fatalf("kmsd_integrity_failing_rows %v after the upgrade", n)
	}
}

// downgradeSQLite turns a stopped kmsd's SQLite database and token back
// into what the previous release wrote: its schema (v3: the same tables
// without the MAC and generation columns), no MAC key, no checkpoints. The
// statements in edits then run on the downgraded database, as that release
// could have written them.
func downgradeSQLite(t *testing.T, tok softhsm.Token, data string, edits []string) {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(data, "kms.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range append([]string{
		`DROP TABLE key_tags`, // tags (schema 7) came after
		// Imported key material (a later step).
		`ALTER TABLE keys DROP COLUMN material_valid_to`, `ALTER TABLE keys DROP COLUMN material_check`,
		`ALTER TABLE keys DROP COLUMN material_loaded`, `DROP TABLE import_params`,
		`ALTER TABLE keys DROP COLUMN gen`, `ALTER TABLE keys DROP COLUMN mac`,
		`ALTER TABLE key_versions DROP COLUMN mac`, `ALTER TABLE pending_objects DROP COLUMN mac`,
		`ALTER TABLE credentials DROP COLUMN gen`, `ALTER TABLE credentials DROP COLUMN mac`, `DROP TABLE audit_anchors`,
		`ALTER TABLE keys DROP COLUMN public_key`, // v5: asymmetric keys
		`PRAGMA user_version = 3`,
	}, edits...) {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	destroyMACKey(t, tok)
	os.Remove(filepath.Join(data, "audit.log.checkpoints")) // that release wrote none
}

// destroyMACKey removes the metadata MAC key from the token, as on a token
// the previous release used.
func destroyMACKey(t *testing.T, tok softhsm.Token) {
	t.Helper()
	for _, kv := range tok.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := p11.OpenToken(ctx, p11.Config{ModulePath: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN, InitArgs: tok.InitArgs, Sessions: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.DestroyKey(ctx, []byte("hsmkms/metadata-mac/v1")); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // SoftHSM2: processes opening one token directory at the same instant can fail
}

// pgConn connects to the cluster's database, as someone who can write it.
func (c *cluster) pgConn(t *testing.T) *pgx.Conn {
	t.Helper()
	var dsn string
	for _, kv := range c.env {
		if f, ok := strings.CutPrefix(kv, "KMSD_POSTGRES_DSN_FILE="); ok {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			dsn = strings.TrimSpace(string(b))
		}
	}
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func pgExec(t *testing.T, conn *pgx.Conn, q string, args ...any) {
	t.Helper()
	tag, err := conn.Exec(t.Context(), q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	if tag.RowsAffected() != 1 {
		t.Fatalf("%s: %d rows", q, tag.RowsAffected())
	}
}

// TestTamperedPostgresIsNotObeyed: edits made in the shared database while
// a node runs are caught at the next refresh, and an old but validly
// sealed row put back is caught by its generation.
func TestTamperedPostgresIsNotObeyed(t *testing.T) {
	c := newCluster(t)
	a := c.start("KMSD_POSTGRES_RESYNC_INTERVAL=300ms")
	encID, encKey := a.credential(t, "enconly", encOnlyPolicy)
	wasID, wasKey := a.credential(t, "restricted", allPolicy)
	key := a.createKey("k")
	disabled := a.createKey("d")
	a.admin(t, "DisableKey", map[string]string{"KeyId": disabled})
	conn := c.pgConn(t)
	var oldPolicy string
	var oldGen int64
	var oldMAC []byte
	if err := conn.QueryRow(t.Context(), `SELECT policy, gen, mac FROM credentials WHERE secret_id = $1`, wasID).Scan(&oldPolicy, &oldGen, &oldMAC); err != nil {
		t.Fatal(err)
	}
	a.admin(t, "UpdateCredentialPolicy", map[string]string{"SecretId": wasID, "Policy": encOnlyPolicy})
	if c := a.tc3(t, tc3Request{action: "ListCredentials", body: "{}", id: wasID, key: wasKey}).code(); c != "UnauthorizedOperation" {
		t.Fatalf("restricted credential: %q", c)
	}

	pgExec(t, conn, `UPDATE credentials SET policy = $1 WHERE secret_id = $2`, allPolicy, encID)
	pgExec(t, conn, `UPDATE keys SET state = 'Enabled' WHERE id = $1`, disabled)
	// The old policy, validly sealed at its time, put back.
	pgExec(t, conn, `UPDATE credentials SET policy = $1, gen = $2, mac = $3 WHERE secret_id = $4`, oldPolicy, oldGen, oldMAC, wasID)

	within(t, 10*time.Second, "tampered rows refused", func() bool {
		return a.tc3(t, tc3Request{action: "ListCredentials", body: "{}", id: encID, key: encKey}).code() == "AuthFailure.SecretIdNotFound" &&
			a.tc3(t, tc3Request{action: "ListCredentials", body: "{}", id: wasID, key: wasKey}).code() == "AuthFailure.SecretIdNotFound" &&
			a.encryptCode(t, disabled, adminID, adminKey) == "ResourceUnavailable.CmkDisabled"
	})
	if c := a.encryptCode(t, key, adminID, adminKey); c != "" {
		t.Fatalf("untouched key: %q", c)
	}
	if n := a.metric(t, "kmsd_integrity_failing_rows"); n != 3 {
		t.Fatalf("kmsd_integrity_failing_rows %v, want 3", n)
	}
	if !strings.Contains(a.stderr.String(), "went back from generation") {
		t.Fatal("the rollback is not reported as such")
	}
	if code, body := a.readyz(t); code != http.StatusOK || body["status"] != "degraded" {
		t.Fatalf("/readyz %d %v", code, body)
	}
	// A second node refuses the edited rows too.
	b := c.start()
	if c := b.tc3(t, tc3Request{action: "ListCredentials", body: "{}", id: encID, key: encKey}).code(); c != "AuthFailure.SecretIdNotFound" {
		t.Fatalf("second node: %q", c)
	}
	if c := b.encryptCode(t, disabled, adminID, adminKey); c != "ResourceUnavailable.CmkDisabled" {
		t.Fatalf("second node: %q", c)
	}
}

// TestUpgradePostgres is TestUpgradeSQLite on a shared PostgreSQL store.
func TestUpgradePostgres(t *testing.T) {
	c := newCluster(t)
	a := c.start()
	encID, encKey := a.credential(t, "app", encOnlyPolicy)
	key := a.createKey("old")
	blob := a.tc3(t, tc3Request{action: "Encrypt", body: mustJSON(map[string]string{"KeyId": key, "Plaintext": b64("before the upgrade")})}).Response.CiphertextBlob
	a.stop()
	conn := c.pgConn(t)
	for _, q := range []string{
		`DROP TABLE key_tags`, // tags (schema 9) came after
		// Imported key material (a later step).
		`ALTER TABLE keys DROP COLUMN material_valid_to`, `ALTER TABLE keys DROP COLUMN material_check`,
		`ALTER TABLE keys DROP COLUMN material_loaded`, `DROP TABLE import_params`,
		`ALTER TABLE keys DROP COLUMN gen`, `ALTER TABLE keys DROP COLUMN mac`,
		`ALTER TABLE key_versions DROP COLUMN mac`, `ALTER TABLE pending_objects DROP COLUMN mac`,
		`ALTER TABLE credentials DROP COLUMN gen`, `ALTER TABLE credentials DROP COLUMN mac`, `DROP TABLE audit_anchors`,
		`DROP TABLE tc3_signatures`, `ALTER TABLE keys DROP COLUMN public_key`, // v7: asymmetric keys
		`UPDATE hsmkms_schema SET version = 4`,
	} {
		if _, err := conn.Exec(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	destroyMACKey(t, c.tok)
	a = c.start()
	if !strings.Contains(a.stderr.String(), "upgrade: computed the MACs") {
		t.Fatalf("the upgrade did not say it sealed the rows:\n%s", a.stderr.String())
	}
	r := a.tc3(t, tc3Request{action: "Decrypt", body: mustJSON(map[string]string{"CiphertextBlob": blob})})
	if r.code() != "" || r.Response.Plaintext != b64("before the upgrade") {
		t.Fatalf("Decrypt of a blob made before the upgrade: %s", r.code())
	}
	if c := a.encryptCode(t, key, encID, encKey); c != "" {
		t.Fatalf("credential made before the upgrade: %q", c)
	}
	b := c.start()
	if n := b.metric(t, "kmsd_integrity_failing_rows"); n != 0 {
		t.Fatalf("second node: kmsd_integrity_failing_rows %v", n)
	}
	if n := a.metric(t, "kmsd_integrity_failing_rows"); n != 0 {
		t.Fatalf("kmsd_integrity_failing_rows %v", n)
	}
}
