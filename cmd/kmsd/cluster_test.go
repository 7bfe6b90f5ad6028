package main_test

// Multi-node tests: two or three real kmsd processes on one PostgreSQL
// database (a throwaway server from store/pgtest, or KMS_TEST_POSTGRES_DSN)
// and one SoftHSM2 token directory, driven through the official Go SDK.

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"

	"hsmkms/softhsm"
	"hsmkms/store/pgtest"
)

// cluster is the shared part of several nodes: one token, one database.
type cluster struct {
	t    *testing.T
	env  []string // without a data directory
	tok  softhsm.Token
	pg   *pgtest.Server
	last time.Time
}

func newCluster(t *testing.T, extraEnv ...string) *cluster {
	t.Helper()
	tok := softhsm.NewTokenNoEnv(t)
	pg := pgtest.Start(t)
	dsnFile := filepath.Join(t.TempDir(), "dsn")
	if err := os.WriteFile(dsnFile, []byte(pg.NewDatabase(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(kmsdEnv(tok, t.TempDir()), "KMSD_POSTGRES_DSN_FILE="+dsnFile)
	env = append(env, extraEnv...)
	bootstrap(t, env)
	return &cluster{t: t, env: env, tok: tok, pg: pg}
}

// nodeEnv is the environment of one more node: its own data directory
// (audit trail) plus extra settings.
func (c *cluster) nodeEnv(extra ...string) []string {
	env := append(append([]string(nil), c.env...), "KMSD_DATA_DIR="+c.t.TempDir())
	return append(env, extra...)
}

// pause keeps node starts apart: SoftHSM2 processes opening one token
// directory at the same instant can fail.
//
// This is a fixed spacing, not a wait for an event: SoftHSM2 offers
// nothing to poll that says another process has finished opening the
// token.
func (c *cluster) pause() {
	if d := 300*time.Millisecond - time.Since(c.last); d > 0 {
		time.Sleep(d)
	}
	c.last = time.Now()
}

// start starts a node (the normal kmsd build).
func (c *cluster) start(extra ...string) *server {
	c.t.Helper()
	c.pause()
	return startKMSD(c.t, c.nodeEnv(extra...))
}

// startFaulty starts a node of the kmsd_faults build (test knobs).
func (c *cluster) startFaulty(extra ...string) *server {
	c.t.Helper()
	c.pause()
	s := startFaulty(c.t, c.nodeEnv(extra...))
	if s == nil {
		c.t.Fatal("kmsd died before it listened")
	}
	return s
}

func blobVersion(t *testing.T, blob string) uint32 {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(blob)
	if err != nil || len(raw) < 21 {
		t.Fatalf("blob %q", blob)
	}
	return binary.BigEndian.Uint32(raw[17:21])
}

func sdkEncryptBlob(c *tckms.Client, keyID, plaintext string) (string, error) {
	req := tckms.NewEncryptRequest()
	req.KeyId, req.Plaintext = common.StringPtr(keyID), common.StringPtr(b64(plaintext))
	resp, err := c.Encrypt(req)
	if err != nil {
		return "", err
	}
	return *resp.Response.CiphertextBlob, nil
}

func sdkDecrypt(c *tckms.Client, blob string) (string, error) {
	req := tckms.NewDecryptRequest()
	req.CiphertextBlob = common.StringPtr(blob)
	resp, err := c.Decrypt(req)
	if err != nil {
		return "", err
	}
	pt, err := base64.StdEncoding.DecodeString(*resp.Response.Plaintext)
	return string(pt), err
}

func sdkCreateKey(t *testing.T, c *tckms.Client, alias string) string {
	t.Helper()
	req := tckms.NewCreateKeyRequest()
	req.Alias = common.StringPtr(alias)
	resp, err := c.CreateKey(req)
	if err != nil {
		t.Fatalf("CreateKey %s: %v", alias, err)
	}
	return *resp.Response.KeyId
}

// workingCopies reads kmsd_hsm_working_copies from a node's /metrics.
func workingCopies(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, "kmsd_hsm_working_copies "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("kmsd_hsm_working_copies %q", v)
			}
			return n
		}
	}
	t.Fatal("/metrics lacks kmsd_hsm_working_copies")
	return 0
}

// within polls f every 10 ms until it returns true and fails the test if
// that takes longer than bound; it returns the time it took.
func within(t *testing.T, bound time.Duration, what string, f func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !f() {
		if time.Since(start) > bound {
			t.Fatalf("%s: not within %s", what, bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func TestClusterConsistency(t *testing.T) {
	c := newCluster(t)
	a, b, cc := c.start(), c.start(), c.start()
	ca, cb, ccc := a.sdk(), b.sdk(), cc.sdk()

	// Created on A, encrypts on B, decrypts on C.
	keyID := sdkCreateKey(t, ca, "shared")
	blob, err := sdkEncryptBlob(cb, keyID, "across nodes")
	if err != nil {
		t.Fatalf("encrypt on B: %v", err)
	}
	if pt, err := sdkDecrypt(ccc, blob); err != nil || pt != "across nodes" {
		t.Fatalf("decrypt on C: %q, %v", pt, err)
	}

	// Disabled on A: refused on B within 1 s, and B drops its working
	// copy of the key (the one its Encrypt made) as well.
	copiesB := workingCopies(t, b.url)
	dis := tckms.NewDisableKeyRequest()
	dis.KeyId = common.StringPtr(keyID)
	if _, err := ca.DisableKey(dis); err != nil {
		t.Fatal(err)
	}
	took := within(t, time.Second, "disable on A enforced on B", func() bool {
		_, err := sdkEncryptBlob(cb, keyID, "x")
		return sdkCode(err) == "ResourceUnavailable.CmkDisabled"
	})
	t.Logf("disable enforced on B after %s", took)
	within(t, time.Second, "B drops its working copy of the disabled key", func() bool {
		return workingCopies(t, b.url) == copiesB-1
	})
	// C learns of it on its own (a notification of its own): within 1 s
	// too, not necessarily by the time B has.
	within(t, time.Second, "disable on A enforced on C's Decrypt", func() bool {
		_, err := sdkDecrypt(ccc, blob)
		return sdkCode(err) == "ResourceUnavailable.CmkDisabled"
	})
	en := tckms.NewEnableKeyRequest()
	en.KeyId = common.StringPtr(keyID)
	nextSecond() // one body, another action: see nextSecond
	if _, err := cb.EnableKey(en); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "enable on B enforced on A", func() bool {
		_, err := sdkEncryptBlob(ca, keyID, "x")
		return err == nil
	})

	// Rotated on B: new blobs from A name the new version within 1 s, and
	// C decrypts them at once.
	rk := tckms.NewRotateKeyRequest()
	rk.KeyId = common.StringPtr(keyID)
	nextSecond() // one body, another action: see nextSecond
	if _, err := cb.RotateKey(rk); err != nil {
		t.Fatal(err)
	}
	var v2 string
	took = within(t, time.Second, "rotation on B used by A", func() bool {
		blob, err := sdkEncryptBlob(ca, keyID, "after rotation")
		if err != nil {
			t.Fatal(err)
		}
		v2 = blob
		return blobVersion(t, blob) == 2
	})
	t.Logf("rotation used by A after %s", took)
	if pt, err := sdkDecrypt(ccc, v2); err != nil || pt != "after rotation" {
		t.Fatalf("decrypt of a version-2 blob on C: %q, %v", pt, err)
	}
	// A rotation on C straight after one on B makes version 3, not a clash.
	// (A fresh request: the SDK binds a request to the first endpoint it
	// was sent to.)
	rk = tckms.NewRotateKeyRequest()
	rk.KeyId = common.StringPtr(keyID)
	if _, err := ccc.RotateKey(rk); err != nil {
		t.Fatalf("second rotation on C: %v", err)
	}
	blob3, err := sdkEncryptBlob(ccc, keyID, "v3")
	if err != nil || blobVersion(t, blob3) != 3 {
		t.Fatalf("after rotations on B then C: version %d, %v\nC:\n%s", blobVersion(t, blob3), err, cc.stderr.String())
	}
	if pt, err := sdkDecrypt(ca, blob3); err != nil || pt != "v3" {
		t.Fatalf("decrypt of a version-3 blob on A: %q, %v", pt, err)
	}

	// A credential created on A authenticates on B at once; disabled on B,
	// it is refused on C within 1 s.
	var created struct {
		Response struct{ SecretId, SecretKey string }
	}
	body := a.api3Call("CreateCredential", `{"Name":"app","Policy":"{\"version\":\"2.0\",\"statement\":[{\"effect\":\"allow\",\"action\":[\"kms:Encrypt\"],\"resource\":[\"*\"]}]}"}`)
	if err := json.Unmarshal(body, &created); err != nil || created.Response.SecretId == "" {
		t.Fatalf("CreateCredential: %s", body)
	}
	appB := sdkClient(t, b, "TC3-HMAC-SHA256", "POST", created.Response.SecretId, created.Response.SecretKey)
	appC := sdkClient(t, cc, "TC3-HMAC-SHA256", "POST", created.Response.SecretId, created.Response.SecretKey)
	if _, err := sdkEncryptBlob(appB, keyID, "app"); err != nil {
		t.Fatalf("new credential on B: %v", err)
	}
	if _, err := sdkEncryptBlob(appC, keyID, "app"); err != nil {
		t.Fatalf("new credential on C: %v", err)
	}
	if body := b.api3Call("DisableCredential", fmt.Sprintf(`{"SecretId":%q}`, created.Response.SecretId)); strings.Contains(string(body), `"Error"`) {
		t.Fatalf("DisableCredential: %s", body)
	}
	within(t, time.Second, "credential disabled on B refused on C", func() bool {
		_, err := sdkEncryptBlob(appC, keyID, "app")
		return sdkCode(err) == "AuthFailure.SecretIdNotFound"
	})

	// A legacy nonce used on A is refused on B (same Host, as behind a
	// load balancer).
	v := a.signLegacy(http.MethodGet, url.Values{"Action": {"Encrypt"}, "keyId": {keyID}, "plaintext": {b64("n")}}, adminID, adminKey)
	host := strings.TrimPrefix(a.url, "http://")
	if r := legacyTo(t, a.url, host, v); r.Code != 0 {
		t.Fatalf("first use on A: %+v", r)
	}
	if r := legacyTo(t, b.url, host, v); r.Code != 4500 {
		t.Fatalf("replay on B: code %d %q, want 4500", r.Code, r.Message)
	}
	if r := legacyTo(t, cc.url, host, v); r.Code != 4500 {
		t.Fatalf("replay on C: code %d %q, want 4500", r.Code, r.Message)
	}
}

// legacyTo sends signed legacy parameters to base with the given Host
// header (the host the request was signed for).
func legacyTo(t *testing.T, base, host string, v url.Values) legacyReply {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/v2/index.php?"+v.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r legacyReply
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("reply %s", raw)
	}
	return r
}

// With a usage limit of 1,000 and the load spread over three nodes, no
// version ever serves more than 1,000 encryptions.
func TestClusterUsageLimit(t *testing.T) {
	c := newCluster(t, "KMSD_USAGE_LIMIT=1000")
	nodes := []*server{
		c.startFaulty("KMSD_USAGE_BATCH=37"),
		c.startFaulty("KMSD_USAGE_BATCH=37"),
		c.startFaulty("KMSD_USAGE_BATCH=37"),
	}
	keyID := sdkCreateKey(t, nodes[0].sdk(), "limited")
	const perWorker, workersPerNode = 200, 4 // 2,400 encryptions
	var mu sync.Mutex
	perVersion := map[uint32]int{}
	var wg sync.WaitGroup
	for _, n := range nodes {
		for range workersPerNode {
			wg.Go(func() {
				client := n.sdk()
				for range perWorker {
					blob, err := sdkEncryptBlob(client, keyID, "count me")
					if err != nil {
						t.Errorf("encrypt on %s: %v", n.url, err)
						return
					}
					mu.Lock()
					perVersion[blobVersion(t, blob)]++
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		// What the nodes logged at Error level says which step failed.
		for _, n := range nodes {
			for _, l := range strings.Split(n.stderr.String(), "\n") {
				if strings.Contains(l, `"level":"ERROR"`) {
					t.Log(l)
				}
			}
		}
	}
	total := 0
	for v, n := range perVersion {
		total += n
		if n > 1000 {
			t.Errorf("version %d served %d encryptions, limit 1000", v, n)
		}
	}
	if total != perWorker*workersPerNode*len(nodes) || len(perVersion) < 3 {
		t.Fatalf("served %d encryptions over versions %v", total, perVersion)
	}
	t.Logf("encryptions per version: %v", perVersion)
	for _, n := range nodes {
		for i, count := range n.versions(keyID) {
			if count > 1000 || count < uint64(perVersion[uint32(i+1)]) {
				t.Fatalf("node %s reports %d encryptions for version %d (served %d)", n.url, count, i+1, perVersion[uint32(i+1)])
			}
		}
	}
}

// SIGKILLing a node mid-load loses no acknowledged key or ciphertext, and
// the background jobs (the purge) move to a surviving node; while the
// first node lives, the other does not run them.
func TestClusterNodeDeathMovesThePurge(t *testing.T) {
	c := newCluster(t)
	// B's clock runs 8 days ahead, C's 16 days: a key scheduled for
	// deletion on B (7 days) is due for C but not for B, so only the node
	// that runs the jobs decides whether it is purged.
	b := c.startFaulty("KMSD_CLOCK_OFFSET=192h", "KMSD_MAINTENANCE_INTERVAL=100ms")
	within(t, 10*time.Second, "B runs the background jobs", func() bool {
		return strings.Contains(b.stderr.String(), "this node now runs the background jobs")
	})
	cc := c.startFaulty("KMSD_CLOCK_OFFSET=384h", "KMSD_MAINTENANCE_INTERVAL=100ms")
	cb, ccc := b.sdk(), cc.sdk()

	doomed := sdkCreateKey(t, cb, "doomed")
	dis := tckms.NewDisableKeyRequest()
	dis.KeyId = common.StringPtr(doomed)
	if _, err := cb.DisableKey(dis); err != nil {
		t.Fatal(err)
	}
	sk := tckms.NewScheduleKeyDeletionRequest()
	sk.KeyId, sk.PendingWindowInDays = common.StringPtr(doomed), common.Uint64Ptr(7)
	if _, err := cb.ScheduleKeyDeletion(sk); err != nil {
		t.Fatal(err)
	}
	nextSecond() // one body, another action: see nextSecond
	state := func(client *tckms.Client, id string) string {
		dk := tckms.NewDescribeKeyRequest()
		dk.KeyId = common.StringPtr(id)
		d, err := client.DescribeKey(dk)
		if err != nil {
			t.Fatalf("DescribeKey %s: %v", id, err)
		}
		return *d.Response.KeyMetadata.KeyState
	}
	// Absence over time is what is checked here, so this waits a fixed
	// while: ten passes of C's maintenance, were it running.
	time.Sleep(time.Second)
	if st := state(ccc, doomed); st != "PendingDelete" {
		t.Fatalf("doomed key is %s while B runs the jobs: C ran them too", st)
	}

	// Load on both nodes: keys created and blobs made, each recorded once
	// acknowledged.
	type ack struct{ keyID, blob, pt string }
	var (
		mu    sync.Mutex
		keys  []string
		blobs []ack
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	base := sdkCreateKey(t, ccc, "base")
	for i, n := range []*server{b, cc, b, cc} {
		wg.Go(func() {
			client := n.sdk()
			client.WithHttpTransport(&http.Transport{}) // no shared idle connections
			for j := 0; !stop.Load(); j++ {
				if j%10 == 0 {
					req := tckms.NewCreateKeyRequest()
					req.Alias = common.StringPtr(fmt.Sprintf("load-%d-%d", i, j))
					if resp, err := client.CreateKey(req); err == nil {
						mu.Lock()
						keys = append(keys, *resp.Response.KeyId)
						mu.Unlock()
					}
					continue
				}
				pt := fmt.Sprintf("payload %d/%d", i, j)
				if blob, err := sdkEncryptBlob(client, base, pt); err == nil {
					mu.Lock()
					blobs = append(blobs, ack{base, blob, pt})
					mu.Unlock()
				}
			}
		})
	}
	acked := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(keys), len(blobs)
	}
	within(t, 20*time.Second, "load acknowledged on both nodes", func() bool {
		nk, nb := acked()
		return nk >= 2 && nb >= 40
	})
	b.cmd.Process.Kill() // SIGKILL mid-load
	<-b.done             // Wait has set ProcessState: the cleanup leaves b alone
	_, atKill := acked()
	within(t, 20*time.Second, "load acknowledged by C after B died", func() bool {
		_, nb := acked()
		return nb >= atKill+20
	})
	stop.Store(true)
	wg.Wait()

	// The purge moves to C.
	took := within(t, 15*time.Second, "purge moved to C", func() bool { return state(ccc, doomed) == "Deleted" })
	t.Logf("purge done by C %s after B died", took)
	if !strings.Contains(cc.stderr.String(), "this node now runs the background jobs") {
		t.Fatal("C did not log taking over the background jobs")
	}
	// Nothing acknowledged is lost.
	mu.Lock()
	defer mu.Unlock()
	if len(keys) == 0 || len(blobs) == 0 {
		t.Fatalf("no load acknowledged: %d keys, %d blobs", len(keys), len(blobs))
	}
	for _, id := range keys {
		if st := state(ccc, id); st != "Enabled" {
			t.Fatalf("acknowledged key %s is %s", id, st)
		}
	}
	for _, a := range blobs {
		if pt, err := sdkDecrypt(ccc, a.blob); err != nil || pt != a.pt {
			t.Fatalf("acknowledged blob of %s: %q, %v", a.keyID, pt, err)
		}
	}
	t.Logf("after SIGKILL of B: %d keys and %d ciphertexts acknowledged, all intact on C", len(keys), len(blobs))
}

// While PostgreSQL is down, Encrypt and Decrypt keep working from the
// cache for the configured time, management actions are refused as
// temporarily unavailable and /readyz names the store; once it is back,
// everything works and nothing acknowledged is lost.
func TestClusterDatabaseOutage(t *testing.T) {
	c := newClusterOwnServer(t)
	a := c.start("KMSD_POSTGRES_STALE_AFTER=4s")
	ca := a.sdk()
	keyID := sdkCreateKey(t, ca, "outage")
	blob, err := sdkEncryptBlob(ca, keyID, "before")
	if err != nil {
		t.Fatal(err)
	}
	c.pg.Stop(t)
	outage := time.Now()

	if _, err := sdkEncryptBlob(ca, keyID, "during"); err != nil {
		t.Fatalf("encrypt during the outage: %v", err)
	}
	if pt, err := sdkDecrypt(ca, blob); err != nil || pt != "before" {
		t.Fatalf("decrypt during the outage: %q, %v", pt, err)
	}
	rk := tckms.NewRotateKeyRequest()
	rk.KeyId = common.StringPtr(keyID)
	if _, err := ca.RotateKey(rk); sdkCode(err) != "UnsupportedOperation.ServiceTemporaryUnavailable" {
		t.Fatalf("rotate during the outage: %v", err)
	}
	if _, err := ca.CreateKey(func() *tckms.CreateKeyRequest {
		r := tckms.NewCreateKeyRequest()
		r.Alias = common.StringPtr("never")
		return r
	}()); sdkCode(err) != "UnsupportedOperation.ServiceTemporaryUnavailable" {
		t.Fatalf("create during the outage: %v", err)
	}
	resp, err := http.Get(a.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `"store"`) || strings.Contains(string(body), `"store":"ok"`) {
		t.Fatalf("/readyz during the outage: %d %s", resp.StatusCode, body)
	}
	// Past the bound (4 s from the last moment the node could confirm its
	// cache, which is before the outage began), cryptographic work is
	// refused too; until then it is served.
	within(t, 15*time.Second, "decrypt refused past the stale bound", func() bool {
		pt, err := sdkDecrypt(ca, blob)
		switch code := sdkCode(err); {
		case err == nil && pt == "before":
			return false
		case code == "UnsupportedOperation.ServiceTemporaryUnavailable":
			return true
		default:
			t.Fatalf("decrypt during the outage: %q, %v", pt, err)
			return false
		}
	})
	t.Logf("decrypt refused %s into the outage", time.Since(outage).Truncate(time.Millisecond))

	c.pg.Restart(t)
	within(t, 15*time.Second, "service back after the database returns", func() bool {
		_, err := sdkEncryptBlob(ca, keyID, "after")
		return err == nil
	})
	if _, err := ca.RotateKey(rk); err != nil {
		t.Fatalf("rotate after the outage: %v", err)
	}
	if pt, err := sdkDecrypt(ca, blob); err != nil || pt != "before" {
		t.Fatalf("decrypt after the outage: %q, %v", pt, err)
	}
}

// newClusterOwnServer is newCluster on a throwaway server of its own, even
// when KMS_TEST_POSTGRES_DSN is set: outage tests stop it.
func newClusterOwnServer(t *testing.T) *cluster {
	t.Helper()
	t.Setenv(pgtest.EnvDSN, "") // empty means unset to pgtest
	return newCluster(t)
}

// TestClusterSignatureBinding: a request captured on one node cannot be
// re-sent to another with another action (TC3, unsigned action) or at all
// (API 3.0 HmacSHA256); the official SDK keeps working on both nodes.
func TestClusterSignatureBinding(t *testing.T) {
	c := newCluster(t)
	a, b := c.start(), c.start()
	keyID := sdkCreateKey(t, a.sdk(), "bound")
	sdkA, ccA, rec := recordedSDK(t, a, "TC3-HMAC-SHA256")
	if st := keyState(t, sdkA, keyID); st != "Enabled" {
		t.Fatal(st)
	}
	// DescribeKey on A, re-sent to B as DisableKey: B waits out the
	// publication interval and finds A's use in the shared table.
	if r := rec.resend(t, b.url, setAction("DisableKey")); r.code() != "AuthFailure.SignatureFailure" {
		t.Errorf("DescribeKey from A re-sent to B as DisableKey: %q", r.code())
	}
	if st := keyState(t, b.sdk(), keyID); st != "Enabled" {
		t.Errorf("key %s after the forgery", st)
	}
	// The same request, unchanged, on B: served.
	if r := rec.resend(t, b.url, nil); r.code() != "" {
		t.Errorf("DescribeKey from A re-sent unchanged to B: %q", r.code())
	}
	// A state-changing request on A, re-sent to B as another.
	made := a.tc3(t, tc3Request{action: "CreateCredential", body: mustJSON(map[string]string{"Name": "c",
		"Policy": `{"version":"2.0","statement":[{"effect":"allow","action":["kms:Encrypt"],"resource":["*"]}]}`})})
	if made.code() != "" {
		t.Fatal(made.code())
	}
	if err := sdkCall(t, ccA, "DisableCredential", map[string]any{"SecretId": made.Response.SecretId}); err != nil {
		t.Fatal(err)
	}
	if r := rec.resend(t, b.url, setAction("EnableCredential")); r.code() != "AuthFailure.SignatureFailure" {
		t.Errorf("DisableCredential from A re-sent to B as EnableCredential: %q", r.code())
	}
	// API 3.0 HmacSHA256: a replay on the other node is refused.
	sdkV1, _, recV1 := recordedSDK(t, a, "HmacSHA256")
	if _, err := sdkV1.ListKeys(tckms.NewListKeysRequest()); err != nil {
		t.Fatal(err)
	}
	if r := recV1.resend(t, b.url, nil); r.code() != "AuthFailure.SignatureFailure" {
		t.Errorf("HmacSHA256 request from A replayed on B: %q", r.code())
	}
	// The official SDK on both nodes, every request signed anew.
	for _, s := range []*server{a, b} {
		blob, err := sdkEncryptBlob(s.sdk(), keyID, "both")
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := sdkDecrypt(s.sdk(), blob); err != nil || pt != "both" {
			t.Fatalf("%q, %v", pt, err)
		}
	}
}
