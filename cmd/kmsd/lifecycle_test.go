package main_test

// Key lifecycle, rotation, data keys and usage limits through the real
// kmsd: every API 3.0 action with the official Go SDK, the legacy actions
// with the legacy signature, and crash tests that SIGKILL kmsd at chosen
// points (a kmsd built with -tags kmsd_faults, see faults.go).

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"

	"hsmkms/softhsm"
	"hsmkms/tcsign"
)

func TestSDKKeyLifecycle(t *testing.T) {
	s, _, _ := newServer(t)
	c := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	form := sdkClient(t, s, "HmacSHA1", "GET", adminID, adminKey) // flattened KeyIds.0, ...
	mk := func(alias string) string {
		r := tckms.NewCreateKeyRequest()
		r.Alias = common.StringPtr(alias)
		out, err := c.CreateKey(r)
		if err != nil {
			t.Fatalf("CreateKey: %v", err)
		}
		return *out.Response.KeyId
	}
	a, b := mk("life-a"), mk("life-b")
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	wantCode := func(what string, err error, code string) {
		t.Helper()
		if got := sdkCode(err); got != code {
			t.Fatalf("%s: %q, want %q", what, got, code)
		}
	}

	// DescribeKey, DescribeKeys, ListKeys, ListKeyDetail.
	dk := tckms.NewDescribeKeyRequest()
	dk.KeyId = common.StringPtr(a)
	d, err := c.DescribeKey(dk)
	must("DescribeKey", err)
	if m := d.Response.KeyMetadata; *m.KeyId != a || *m.Alias != "life-a" || *m.KeyState != "Enabled" || *m.Origin != "TENCENT_KMS" || *m.KeyRotationEnabled {
		t.Fatalf("DescribeKey %s", d.ToJsonString())
	}
	dks := tckms.NewDescribeKeysRequest()
	dks.KeyIds = common.StringPtrs([]string{b, a})
	ds, err := form.DescribeKeys(dks)
	must("DescribeKeys", err)
	if len(ds.Response.KeyMetadatas) != 2 || *ds.Response.KeyMetadatas[0].KeyId != b {
		t.Fatalf("DescribeKeys %s", ds.ToJsonString())
	}
	dks = tckms.NewDescribeKeysRequest() // a request object is bound to the first client that sends it
	dks.KeyIds = common.StringPtrs([]string{a, a})
	_, err = c.DescribeKeys(dks)
	wantCode("DescribeKeys with a duplicate", err, "InvalidParameterValue.DuplicatedKeyId")
	lk := tckms.NewListKeysRequest()
	lk.Limit = common.Uint64Ptr(1)
	l, err := c.ListKeys(lk)
	must("ListKeys", err)
	if *l.Response.TotalCount != 2 || len(l.Response.Keys) != 1 || *l.Response.Keys[0].KeyId != a {
		t.Fatalf("ListKeys %s", l.ToJsonString())
	}
	lk.Limit = common.Uint64Ptr(201)
	_, err = c.ListKeys(lk)
	wantCode("ListKeys limit 201", err, "InvalidParameterValue")

	// State changes.
	ek := tckms.NewDisableKeyRequest()
	ek.KeyId = common.StringPtr(a)
	nextSecond() // one body, another action: see nextSecond
	_, err = c.DisableKey(ek)
	must("DisableKey", err)
	enc := tckms.NewEncryptRequest()
	enc.KeyId = common.StringPtr(a)
	enc.Plaintext = common.StringPtr(b64("x"))
	_, err = c.Encrypt(enc)
	wantCode("Encrypt a disabled key", err, "ResourceUnavailable.CmkDisabled")
	lkd := tckms.NewListKeyDetailRequest()
	lkd.KeyState = common.Uint64Ptr(2)
	lkd.OrderType = common.Uint64Ptr(1)
	ld, err := c.ListKeyDetail(lkd)
	must("ListKeyDetail", err)
	if *ld.Response.TotalCount != 1 || *ld.Response.KeyMetadatas[0].KeyId != a {
		t.Fatalf("ListKeyDetail %s", ld.ToJsonString())
	}
	lkd = tckms.NewListKeyDetailRequest()
	lkd.KeyState = common.Uint64Ptr(0)
	lkd.SearchKeyAlias = common.StringPtr("LIFE-B")
	ld, err = form.ListKeyDetail(lkd)
	must("ListKeyDetail search", err)
	if *ld.Response.TotalCount != 1 || *ld.Response.KeyMetadatas[0].KeyId != b {
		t.Fatalf("ListKeyDetail search %s", ld.ToJsonString())
	}
	sk := tckms.NewScheduleKeyDeletionRequest()
	sk.KeyId = common.StringPtr(b)
	sk.PendingWindowInDays = common.Uint64Ptr(7)
	_, err = c.ScheduleKeyDeletion(sk)
	wantCode("ScheduleKeyDeletion of an Enabled key", err, "ResourceUnavailable.CmkShouldBeDisabled")
	sk.KeyId = common.StringPtr(a)
	sk.PendingWindowInDays = common.Uint64Ptr(6)
	_, err = c.ScheduleKeyDeletion(sk)
	wantCode("ScheduleKeyDeletion 6 days", err, "InvalidParameter.InvalidPendingWindowInDays")
	sk.PendingWindowInDays = common.Uint64Ptr(30)
	sr, err := c.ScheduleKeyDeletion(sk)
	must("ScheduleKeyDeletion", err)
	if *sr.Response.KeyId != a || *sr.Response.DeletionDate < uint64(time.Now().Add(29*24*time.Hour).Unix()) {
		t.Fatalf("ScheduleKeyDeletion %s", sr.ToJsonString())
	}
	_, err = c.Encrypt(enc)
	wantCode("Encrypt a key pending deletion", err, "ResourceUnavailable.CmkStateNotSupport")
	ck := tckms.NewCancelKeyDeletionRequest()
	ck.KeyId = common.StringPtr(a)
	nextSecond() // one body, another action: see nextSecond
	_, err = c.CancelKeyDeletion(ck)
	must("CancelKeyDeletion", err)
	_, err = c.CancelKeyDeletion(ck)
	wantCode("CancelKeyDeletion twice", err, "ResourceUnavailable.CmkNotPendingDelete")
	en := tckms.NewEnableKeysRequest()
	en.KeyIds = common.StringPtrs([]string{a, b})
	_, err = form.EnableKeys(en)
	must("EnableKeys", err)
	ak := tckms.NewArchiveKeyRequest()
	ak.KeyId = common.StringPtr(a)
	nextSecond() // one body, another action: see nextSecond
	_, err = c.ArchiveKey(ak)
	must("ArchiveKey", err)
	_, err = c.Encrypt(enc)
	wantCode("Encrypt an archived key", err, "ResourceUnavailable.CmkArchived")
	cak := tckms.NewCancelKeyArchiveRequest()
	cak.KeyId = common.StringPtr(a)
	nextSecond() // one body, another action: see nextSecond
	_, err = c.CancelKeyArchive(cak)
	must("CancelKeyArchive", err)
	dis := tckms.NewDisableKeysRequest()
	dis.KeyIds = common.StringPtrs([]string{b})
	_, err = c.DisableKeys(dis)
	must("DisableKeys", err)
	ena := tckms.NewEnableKeyRequest()
	ena.KeyId = common.StringPtr(b)
	_, err = c.EnableKey(ena)
	must("EnableKey", err)
	ua := tckms.NewUpdateAliasRequest()
	ua.KeyId, ua.Alias = common.StringPtr(a), common.StringPtr("life-b")
	_, err = c.UpdateAlias(ua)
	wantCode("UpdateAlias to a taken alias", err, "InvalidParameterValue.AliasAlreadyExists")
	ua.Alias = common.StringPtr("life-a2")
	_, err = c.UpdateAlias(ua)
	must("UpdateAlias", err)
	ud := tckms.NewUpdateKeyDescriptionRequest()
	ud.KeyId, ud.Description = common.StringPtr(a), common.StringPtr("described")
	_, err = c.UpdateKeyDescription(ud)
	must("UpdateKeyDescription", err)
	nextSecond() // one body, another action: see nextSecond
	d, err = c.DescribeKey(dk)
	must("DescribeKey", err)
	if m := d.Response.KeyMetadata; *m.Alias != "life-a2" || *m.Description != "described" || *m.KeyState != "Enabled" || *m.DeletionDate != 0 {
		t.Fatalf("after the changes: %s", d.ToJsonString())
	}

	// Rotation: encrypt under v1, rotate twice, every blob decrypts and the
	// newest names v3.
	er, err := c.Encrypt(enc)
	must("Encrypt", err)
	blobs := []string{*er.Response.CiphertextBlob}
	nextSecond() // one body, another action: see nextSecond
	for range 2 {
		rk := tckms.NewRotateKeyRequest()
		rk.KeyId = common.StringPtr(a)
		rr, err := c.RotateKey(rk)
		must("RotateKey", err)
		if *rr.Response.TaskId == "" {
			t.Fatalf("RotateKey %s", rr.ToJsonString())
		}
		er, err := c.Encrypt(enc)
		must("Encrypt", err)
		blobs = append(blobs, *er.Response.CiphertextBlob)
	}
	raw, _ := base64.StdEncoding.DecodeString(blobs[2])
	if binary.BigEndian.Uint32(raw[17:21]) != 3 {
		t.Fatal("newest blob does not name version 3")
	}
	for _, blob := range blobs {
		dec := tckms.NewDecryptRequest()
		dec.CiphertextBlob = common.StringPtr(blob)
		dr, err := c.Decrypt(dec)
		must("Decrypt", err)
		if *dr.Response.Plaintext != b64("x") {
			t.Fatal("wrong plaintext")
		}
	}
	ekr := tckms.NewEnableKeyRotationRequest()
	ekr.KeyId, ekr.RotateDays = common.StringPtr(a), common.Uint64Ptr(90)
	_, err = c.EnableKeyRotation(ekr)
	must("EnableKeyRotation", err)
	ekr.RotateDays = common.Uint64Ptr(400)
	_, err = c.EnableKeyRotation(ekr)
	wantCode("EnableKeyRotation 400 days", err, "InvalidParameterValue")
	gs := tckms.NewGetKeyRotationStatusRequest()
	gs.KeyId = common.StringPtr(a)
	nextSecond() // one body, another action: see nextSecond
	g, err := c.GetKeyRotationStatus(gs)
	must("GetKeyRotationStatus", err)
	if !*g.Response.KeyRotationEnabled {
		t.Fatal("rotation not enabled")
	}
	nextSecond() // one body, another action: see nextSecond
	d, _ = c.DescribeKey(dk)
	if m := d.Response.KeyMetadata; *m.RotateDays != 90 || *m.LastRotateTime == 0 || *m.NextRotateTime != *m.LastRotateTime+90*86400 {
		t.Fatalf("rotation metadata %s", d.ToJsonString())
	}
	dkr := tckms.NewDisableKeyRotationRequest()
	dkr.KeyId = common.StringPtr(a)
	nextSecond() // one body, another action: see nextSecond
	_, err = c.DisableKeyRotation(dkr)
	must("DisableKeyRotation", err)
	nextSecond() // one body, another action: see nextSecond
	if g, _ := c.GetKeyRotationStatus(gs); *g.Response.KeyRotationEnabled {
		t.Fatal("rotation still enabled")
	}

	// Data keys, ReEncrypt, GenerateRandom.
	gd := tckms.NewGenerateDataKeyRequest()
	gd.KeyId, gd.KeySpec, gd.EncryptionContext = common.StringPtr(a), common.StringPtr("AES_256"), common.StringPtr(`{"app":"dk"}`)
	gr, err := c.GenerateDataKey(gd)
	must("GenerateDataKey", err)
	secret(*gr.Response.Plaintext) // the data key, base64: never in a log
	dkey, _ := base64.StdEncoding.DecodeString(*gr.Response.Plaintext)
	secret(string(dkey))
	if len(dkey) != 32 || *gr.Response.KeyId != a {
		t.Fatalf("GenerateDataKey %d bytes", len(dkey))
	}
	gd.NumberOfBytes = common.Uint64Ptr(1025)
	_, err = c.GenerateDataKey(gd)
	wantCode("GenerateDataKey 1025 bytes", err, "InvalidParameter")
	re := tckms.NewReEncryptRequest()
	re.CiphertextBlob, re.DestinationKeyId = gr.Response.CiphertextBlob, common.StringPtr(b)
	re.SourceEncryptionContext, re.DestinationEncryptionContext = common.StringPtr(`{"app":"dk"}`), common.StringPtr(`{"app":"moved"}`)
	rr, err := c.ReEncrypt(re)
	must("ReEncrypt", err)
	if *rr.Response.KeyId != b || *rr.Response.SourceKeyId != a || !*rr.Response.ReEncrypted {
		t.Fatalf("ReEncrypt %s", rr.ToJsonString())
	}
	dec := tckms.NewDecryptRequest()
	dec.CiphertextBlob, dec.EncryptionContext = rr.Response.CiphertextBlob, common.StringPtr(`{"app":"moved"}`)
	dr, err := c.Decrypt(dec)
	must("Decrypt the re-encrypted data key", err)
	if *dr.Response.Plaintext != *gr.Response.Plaintext {
		t.Fatal("data key changed in ReEncrypt")
	}
	rnd := tckms.NewGenerateRandomRequest()
	rnd.NumberOfBytes = common.Uint64Ptr(1024)
	rn, err := form.GenerateRandom(rnd)
	must("GenerateRandom", err)
	if got, _ := base64.StdEncoding.DecodeString(*rn.Response.Plaintext); len(got) != 1024 {
		t.Fatalf("GenerateRandom %d bytes", len(got))
	}
	rnd = tckms.NewGenerateRandomRequest()
	rnd.NumberOfBytes = common.Uint64Ptr(0)
	_, err = c.GenerateRandom(rnd)
	wantCode("GenerateRandom 0 bytes", err, "InvalidParameter")
}

func TestLegacyKeyLifecycle(t *testing.T) {
	s, _, _ := newServer(t)
	key := s.createKey("legacy-life")
	post := func(v url.Values) legacyReply { return s.call(http.MethodPost, v) }
	attrs := func() map[string]any {
		t.Helper()
		r := s.signLegacy(http.MethodPost, url.Values{"Action": {"GetKeyAttributes"}, "keyId": {key}}, adminID, adminKey)
		resp, err := http.Post(s.url+"/v2/index.php", "application/x-www-form-urlencoded", strings.NewReader(r.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Code        int            `json:"code"`
			KeyMetadata map[string]any `json:"keyMetadata"`
		}
		json.NewDecoder(resp.Body).Decode(&body)
		if body.Code != 0 {
			t.Fatalf("GetKeyAttributes code %d", body.Code)
		}
		return body.KeyMetadata
	}
	if m := attrs(); m["keyState"] != "Enabled" || m["deleteTime"] != float64(0) || m["keyUsage"] != "ENCRYPT/DECRYPT" {
		t.Fatalf("GetKeyAttributes %v", m)
	}
	// GenerateDataKey as the Java SDK sends it: numberOfBytes=0 means "not given".
	gd := s.mustOK(http.MethodPost, url.Values{"Action": {"GenerateDataKey"}, "keyId": {key}, "keySpec": {"AES_128"}, "numberOfBytes": {"0"}, "encryptionContext": {`{"a":"b"}`}})
	if dk, _ := base64.StdEncoding.DecodeString(gd.Plaintext); len(dk) != 16 || gd.KeyID != key {
		t.Fatalf("GenerateDataKey %+v", gd)
	}
	if dec := s.mustOK(http.MethodPost, url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {gd.CiphertextBlob}, "encryptionContext": {`{"a":"b"}`}}); dec.Plaintext != gd.Plaintext {
		t.Fatal("data key blob does not decrypt to the data key")
	}
	gd = s.mustOK(http.MethodGet, url.Values{"Action": {"GenerateDataKey"}, "keyId": {key}, "numberOfBytes": {"64"}})
	if dk, _ := base64.StdEncoding.DecodeString(gd.Plaintext); len(dk) != 64 {
		t.Fatalf("GenerateDataKey numberOfBytes=64: %d bytes", len(dk))
	}
	for _, tc := range []struct {
		v    url.Values
		code int
	}{
		{url.Values{"Action": {"GenerateDataKey"}, "keyId": {key}, "numberOfBytes": {"0"}}, 4000},
		{url.Values{"Action": {"GenerateDataKey"}, "keyId": {key}, "numberOfBytes": {"1025"}}, 4000},
		{url.Values{"Action": {"ScheduleKeyDeletion"}, "keyId": {key}, "pendingWindowInDays": {"7"}}, 5100},
		{url.Values{"Action": {"CancelKeyDeletion"}, "keyId": {key}}, 5100},
		{url.Values{"Action": {"SetKeyAttributes"}, "keyId": {key}, "alias": {"bad alias"}}, 4000},
		{url.Values{"Action": {"EnableKey"}, "keyId": {"00000000-0000-4000-8000-000000000000"}}, 5000},
	} {
		if r := post(tc.v); r.Code != tc.code {
			t.Fatalf("%v: code %d %q, want %d", tc.v, r.Code, r.Message, tc.code)
		}
	}
	s.mustOK(http.MethodPost, url.Values{"Action": {"SetKeyAttributes"}, "keyId": {key}, "alias": {"legacy-renamed"}})
	s.mustOK(http.MethodPost, url.Values{"Action": {"DisableKey"}, "keyId": {key}})
	if r := post(url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}}); r.Code != 5100 {
		t.Fatalf("Encrypt a disabled key: %d", r.Code)
	}
	s.mustOK(http.MethodPost, url.Values{"Action": {"ScheduleKeyDeletion"}, "keyId": {key}, "pendingWindowInDays": {"7"}})
	if m := attrs(); m["keyState"] != "PendingDelete" || m["deleteTime"].(float64) < float64(time.Now().Add(6*24*time.Hour).Unix()) || m["alias"] != "legacy-renamed" {
		t.Fatalf("GetKeyAttributes %v", m)
	}
	s.mustOK(http.MethodPost, url.Values{"Action": {"CancelKeyDeletion"}, "keyId": {key}})
	s.mustOK(http.MethodPost, url.Values{"Action": {"EnableKey"}, "keyId": {key}})
	if m := attrs(); m["keyState"] != "Enabled" || m["deleteTime"] != float64(0) {
		t.Fatalf("GetKeyAttributes %v", m)
	}
	second := s.createKey("legacy-2")
	r := s.signLegacy(http.MethodGet, url.Values{"Action": {"ListKey"}, "offset": {"1"}, "limit": {"5"}}, adminID, adminKey)
	resp, err := http.Get(s.url + "/v2/index.php?" + r.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Code       int `json:"code"`
		TotalCount int `json:"totalCount"`
		Keys       []struct {
			KeyID string `json:"keyId"`
		} `json:"keys"`
	}
	json.NewDecoder(resp.Body).Decode(&list)
	if list.Code != 0 || list.TotalCount != 2 || len(list.Keys) != 1 || list.Keys[0].KeyID != second {
		t.Fatalf("ListKey %+v", list)
	}
}

// ---------------------------------------------------------------------------
// Crash consistency

var (
	faultyOnce sync.Once
	faultyErr  error
)

// faultyKMSD builds kmsd with the kmsd_faults tag once.
func faultyKMSD(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "kmsd-faults")
	faultyOnce.Do(func() {
		out, err := exec.Command("go", "build", "-race", "-tags", "kmsd_faults", "-o", bin, "hsmkms/cmd/kmsd").CombinedOutput()
		if err != nil {
			faultyErr = fmt.Errorf("building kmsd -tags kmsd_faults: %v\n%s", err, out)
		}
	})
	if faultyErr != nil {
		t.Fatal(faultyErr)
	}
	return bin
}

// startFaulty starts the fault-injecting kmsd. It returns a listening
// server, or nil if kmsd killed itself before it listened.
func startFaulty(t *testing.T, env []string) *server {
	t.Helper()
	s, exited := launch(t, faultyKMSD(t), env, "-log-level", "debug")
	if exited != nil {
		return nil // it killed itself before it listened
	}
	return s
}

// killed waits for kmsd to have killed itself at its fault point.
func (s *server) killed() {
	s.t.Helper()
	select {
	case err := <-s.done:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ProcessState.Sys() == nil || !strings.Contains(ee.Error(), "killed") {
			s.t.Fatalf("kmsd ended with %v, want SIGKILL\n%s", err, s.stderr.String())
		}
	case <-time.After(30 * time.Second):
		s.t.Fatal("kmsd did not die at its fault point")
	}
}

// recovery returns the counts of kmsd's start-up recovery log line.
func (s *server) recovery() map[string]float64 {
	s.t.Helper()
	for _, line := range strings.Split(s.stderr.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "kms: recovery done" {
			out := map[string]float64{}
			for _, k := range []string{"committed", "rolled_back", "unresolved", "orphans", "missing"} {
				out[k], _ = m[k].(float64)
			}
			return out
		}
	}
	s.t.Fatalf("no recovery line\n%s", s.stderr.String())
	return nil
}

func (s *server) sdk() *tckms.Client {
	return sdkClient(s.t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
}

func crashEnv(t *testing.T) (env []string, tok softhsm.Token) {
	tok = softhsm.NewTokenNoEnv(t)
	env = kmsdEnv(tok, t.TempDir())
	bootstrap(t, env)
	return env, tok
}

func TestCrashCreateAndRotate(t *testing.T) {
	for _, point := range []string{"create:intent", "create:generated", "rotate:intent", "rotate:generated"} {
		t.Run(point, func(t *testing.T) {
			env, _ := crashEnv(t)
			s := startFaulty(t, env)
			c := s.sdk()
			ck := tckms.NewCreateKeyRequest()
			ck.Alias = common.StringPtr("survivor")
			created, err := c.CreateKey(ck)
			if err != nil {
				t.Fatal(err)
			}
			keyID := *created.Response.KeyId
			enc := tckms.NewEncryptRequest()
			enc.KeyId, enc.Plaintext = created.Response.KeyId, common.StringPtr(b64("before the crash"))
			er, err := c.Encrypt(enc)
			if err != nil {
				t.Fatal(err)
			}
			s.stop()

			// Restart armed, and crash in the middle of the operation.
			s = startFaulty(t, append(env, "KMSD_FAULT_POINT="+point))
			c = s.sdk()
			if strings.HasPrefix(point, "create") {
				ck := tckms.NewCreateKeyRequest() // request objects are bound to their first client
				ck.Alias = common.StringPtr("lost")
				if _, err := c.CreateKey(ck); err == nil {
					t.Fatal("CreateKey answered although kmsd was killed")
				}
			} else {
				rk := tckms.NewRotateKeyRequest()
				rk.KeyId = common.StringPtr(keyID)
				if _, err := c.RotateKey(rk); err == nil {
					t.Fatal("RotateKey answered although kmsd was killed")
				}
			}
			s.killed()

			// Restart: the intent is rolled back, nothing reported is missing,
			// no orphan is left, and the service works on.
			s = startFaulty(t, env)
			rec := s.recovery()
			wantRolled := 0.0
			if strings.HasSuffix(point, "generated") || strings.HasSuffix(point, "intent") {
				wantRolled = 1
			}
			if rec["rolled_back"] != wantRolled || rec["orphans"] != 0 || rec["missing"] != 0 || rec["unresolved"] != 0 {
				t.Fatalf("recovery %v", rec)
			}
			c = s.sdk()
			lk, err := c.ListKeys(tckms.NewListKeysRequest())
			if err != nil || *lk.Response.TotalCount != 1 || *lk.Response.Keys[0].KeyId != keyID {
				t.Fatalf("ListKeys %v %v", lk, err)
			}
			dec := tckms.NewDecryptRequest()
			dec.CiphertextBlob = er.Response.CiphertextBlob
			if dr, err := c.Decrypt(dec); err != nil || *dr.Response.Plaintext != b64("before the crash") {
				t.Fatalf("Decrypt after the crash: %v", err)
			}
			rk := tckms.NewRotateKeyRequest()
			rk.KeyId = common.StringPtr(keyID)
			if rr, err := c.RotateKey(rk); err != nil || *rr.Response.TaskId == "" {
				t.Fatalf("RotateKey after the crash: %v", err)
			}
			dk := tckms.NewDescribeKeyRequest()
			dk.KeyId = common.StringPtr(keyID)
			nextSecond() // one body, another action: see nextSecond
			if d, err := c.DescribeKey(dk); err != nil || !bytes.Contains([]byte(d.ToJsonString()), []byte(`"KeyState":"Enabled"`)) {
				t.Fatalf("DescribeKey %v", err)
			}
			ck = tckms.NewCreateKeyRequest()
			ck.Alias = common.StringPtr("lost") // the alias of the rolled-back key is free
			if _, err := c.CreateKey(ck); err != nil {
				t.Fatalf("CreateKey after the crash: %v", err)
			}
			s.stop()
			s = startFaulty(t, env)
			if rec := s.recovery(); rec["rolled_back"] != 0 || rec["orphans"] != 0 || rec["missing"] != 0 {
				t.Fatalf("second recovery %v", rec)
			}
		})
	}
}

func TestCrashPurge(t *testing.T) {
	env, _ := crashEnv(t)
	s := startFaulty(t, env)
	c := s.sdk()
	ck := tckms.NewCreateKeyRequest()
	ck.Alias = common.StringPtr("doomed")
	created, err := c.CreateKey(ck)
	if err != nil {
		t.Fatal(err)
	}
	keyID := created.Response.KeyId
	rk := tckms.NewRotateKeyRequest()
	rk.KeyId = keyID
	if _, err := c.RotateKey(rk); err != nil {
		t.Fatal(err)
	}
	dis := tckms.NewDisableKeyRequest()
	dis.KeyId = keyID
	nextSecond() // one body, another action: see nextSecond
	if _, err := c.DisableKey(dis); err != nil {
		t.Fatal(err)
	}
	sk := tckms.NewScheduleKeyDeletionRequest()
	sk.KeyId, sk.PendingWindowInDays = keyID, common.Uint64Ptr(7)
	if _, err := c.ScheduleKeyDeletion(sk); err != nil {
		t.Fatal(err)
	}
	s.stop()

	// Eight days later (by the injected clock), the purge starts at once
	// and is killed after destroying the first of the two token objects.
	later := append(env, "KMSD_CLOCK_OFFSET=192h", "KMSD_MAINTENANCE_INTERVAL=200ms")
	if s := startFaulty(t, append(later, "KMSD_FAULT_POINT=purge:destroyed-one")); s != nil {
		s.killed()
	}
	// Restarted, kmsd finishes the purge: no version is reported missing
	// meanwhile, the key becomes a tombstone, and nothing is left on the token.
	s = startFaulty(t, later)
	if rec := s.recovery(); rec["missing"] != 0 || rec["unresolved"] != 0 {
		t.Fatalf("recovery %v", rec)
	}
	c = s.sdk()
	dk := tckms.NewDescribeKeyRequest()
	dk.KeyId = keyID
	deadline := time.Now().Add(20 * time.Second)
	for {
		d, err := c.DescribeKey(dk)
		if err != nil {
			t.Fatal(err)
		}
		if *d.Response.KeyMetadata.KeyState == "Deleted" {
			if *d.Response.KeyMetadata.DeletionDate < uint64(time.Now().Add(7*24*time.Hour).Unix()) {
				t.Fatalf("tombstone %s", d.ToJsonString())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not purged: %s\n%s", d.ToJsonString(), s.stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop()
	s = startFaulty(t, later)
	if rec := s.recovery(); rec["orphans"] != 0 || rec["missing"] != 0 {
		t.Fatalf("recovery after the purge %v: a token object survived or is reported missing", rec)
	}
}

func TestCrashUsageCountNeverGoesBack(t *testing.T) {
	env, _ := crashEnv(t)
	env = append(env, "KMSD_USAGE_LIMIT=5", "KMSD_USAGE_BATCH=2")
	s := startFaulty(t, env)
	c := s.sdk()
	ck := tckms.NewCreateKeyRequest()
	ck.Alias = common.StringPtr("counted")
	created, err := c.CreateKey(ck)
	if err != nil {
		t.Fatal(err)
	}
	enc := tckms.NewEncryptRequest()
	enc.KeyId, enc.Plaintext = created.Response.KeyId, common.StringPtr(b64("x"))
	var last string
	for range 6 {
		er, err := c.Encrypt(enc)
		if err != nil {
			t.Fatal(err)
		}
		last = *er.Response.CiphertextBlob
	}
	raw, _ := base64.StdEncoding.DecodeString(last)
	if binary.BigEndian.Uint32(raw[17:21]) != 2 {
		t.Fatal("encryption limit+1 was not served by version 2")
	}
	before := s.versions(*created.Response.KeyId)
	s.cmd.Process.Kill()
	<-s.done
	s = startFaulty(t, env)
	after := s.versions(*created.Response.KeyId)
	if len(after) != 2 {
		t.Fatalf("versions after restart %v", after)
	}
	for i := range before {
		if after[i] < before[i] {
			t.Fatalf("version %d: count went back from %d to %d", i+1, before[i], after[i])
		}
	}
}

// versions returns the encryption count of each version (ListKeyVersions,
// hsmkms's extension action).
func (s *server) versions(keyID string) []uint64 {
	s.t.Helper()
	var out struct {
		Response struct {
			Versions []struct{ EncryptionCount uint64 }
			Error    *struct{ Code string }
		}
	}
	body := s.api3Call("ListKeyVersions", fmt.Sprintf(`{"KeyId":%q}`, keyID))
	if err := json.Unmarshal(body, &out); err != nil || out.Response.Error != nil {
		s.t.Fatalf("ListKeyVersions: %s", body)
	}
	var counts []uint64
	for _, v := range out.Response.Versions {
		counts = append(counts, v.EncryptionCount)
	}
	return counts
}

// api3Call sends one TC3-signed API 3.0 action as the administrator and
// returns the raw reply.
func (s *server) api3Call(action, body string) []byte {
	s.t.Helper()
	ts := time.Now().Unix()
	req, err := http.NewRequest(http.MethodPost, s.url+"/", strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", action)
	req.Header.Set("X-TC-Version", "2019-01-18")
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("Authorization", tcsign.SignTC3(adminID, adminKey, "kms", http.MethodPost, strings.TrimPrefix(s.url, "http://"), "application/json", "", ts, []byte(body)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return raw
}

// TestKmsctlKeyCommands runs every key command of kmsctl against kmsd,
// with table output and with -json.
func TestKmsctlKeyCommands(t *testing.T) {
	s, _, _ := newServer(t)
	ctl := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "kmsctl"), append([]string{"-endpoint", s.url}, args...)...)
		cmd.Env = append(os.Environ(), "TENCENTCLOUD_SECRET_ID="+adminID, "TENCENTCLOUD_SECRET_KEY="+adminKey)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("%v: %s", err, stderr.String())
		}
		return string(out), nil
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := ctl(args...)
		if err != nil {
			t.Fatalf("kmsctl %v: %v", args, err)
		}
		return out
	}
	a, b := s.createKey("ctl-a"), s.createKey("ctl-b")
	if out := must("describe-key", "-key-id", a); !regexpLine(out, "KeyState", "Enabled") || !regexpLine(out, "Alias", "ctl-a") {
		t.Fatalf("describe-key:\n%s", out)
	}
	var js struct {
		KeyMetadata struct{ KeyId, KeyState string }
	}
	if err := json.Unmarshal([]byte(must("describe-key", "-key-id", a, "-json")), &js); err != nil || js.KeyMetadata.KeyId != a {
		t.Fatalf("describe-key -json: %+v %v", js, err)
	}
	if out := must("describe-keys", "-key-ids", a+","+b); !strings.Contains(out, a) || !strings.Contains(out, b) || !strings.Contains(out, "KeyState") {
		t.Fatalf("describe-keys:\n%s", out)
	}
	if out := must("list-keys", "-limit", "5"); !strings.Contains(out, a) || !regexpLine(out, "TotalCount", "2") {
		t.Fatalf("list-keys:\n%s", out)
	}
	must("rotate-key", "-key-id", a)
	if out := must("key-versions", "-key-id", a); !strings.Contains(out, "EncryptionCount") || strings.Count(out, "\n") != 5 {
		t.Fatalf("key-versions:\n%s", out)
	}
	must("enable-key-rotation", "-key-id", a, "-rotate-days", "30")
	if out := must("get-key-rotation-status", "-key-id", a); !regexpLine(out, "KeyRotationEnabled", "true") || !regexpLine(out, "CurrentVersion", "2") {
		t.Fatalf("get-key-rotation-status:\n%s", out)
	}
	must("disable-key-rotation", "-key-id", a)
	must("update-alias", "-key-id", a, "-alias", "ctl-a2")
	must("update-key-description", "-key-id", a, "-description", "via kmsctl")
	var dk struct{ KeyId, Plaintext, CiphertextBlob string }
	if err := json.Unmarshal([]byte(must("generate-data-key", "-key-id", a, "-key-spec", "AES_256", "-context", `{"a":"b"}`, "-json")), &dk); err != nil || dk.CiphertextBlob == "" {
		t.Fatalf("generate-data-key: %+v %v", dk, err)
	}
	if out := must("re-encrypt", "-blob", dk.CiphertextBlob, "-source-context", `{"a":"b"}`, "-to-key-id", b); !regexpLine(out, "ReEncrypted", "true") || !regexpLine(out, "KeyId", b) {
		t.Fatalf("re-encrypt:\n%s", out)
	}
	if out := must("generate-random", "-bytes", "16"); !strings.Contains(out, "Plaintext") {
		t.Fatalf("generate-random:\n%s", out)
	}
	must("archive-key", "-key-id", b)
	must("cancel-key-archive", "-key-id", b)
	must("disable-keys", "-key-ids", a+","+b)
	must("enable-keys", "-key-ids", a)
	must("disable-key", "-key-id", a)
	must("enable-key", "-key-id", b)
	if out := must("schedule-key-deletion", "-key-id", a, "-days", "7"); !strings.Contains(out, "DeletionDate") {
		t.Fatalf("schedule-key-deletion:\n%s", out)
	}
	if out := must("list-key-detail", "-state", "3"); !strings.Contains(out, a) || strings.Contains(out, b) || !strings.Contains(out, "PendingDelete") {
		t.Fatalf("list-key-detail:\n%s", out)
	}
	must("cancel-key-deletion", "-key-id", a)
	if _, err := ctl("cancel-key-deletion", "-key-id", a); err == nil || !strings.Contains(err.Error(), "ResourceUnavailable.CmkNotPendingDelete") {
		t.Fatalf("cancel-key-deletion twice: %v", err)
	}
	if _, err := ctl("schedule-key-deletion", "-key-id", a); err == nil || !strings.Contains(err.Error(), "-days is required") {
		t.Fatalf("missing -days: %v", err)
	}
}

// regexpLine reports whether out has a table line "name value".
func regexpLine(out, name, value string) bool {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == name && f[1] == value {
			return true
		}
	}
	return false
}

// nextSecond waits for the clock's next second. Two calls of the official
// SDK with one body (e.g. {"KeyId":K}) and different actions within one
// second carry one signature (the SDK does not sign the action), and kmsd
// refuses the second as a possible forgery (README "Authentication
// rules"): tests that make such calls wait for a new second in between.
func nextSecond() {
	now := time.Now().Unix()
	for time.Now().Unix() == now {
		time.Sleep(10 * time.Millisecond)
	}
}
