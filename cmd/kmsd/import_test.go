package main_test

// Imported key material (BYOK) end to end, with the official Go SDK: a key
// made with Type 2, material wrapped with the stdlib under the public key
// kmsd returns and unwrapped inside the token, ciphertexts checked with
// Go's AES-GCM under the known key (README "Ciphertext envelope"), the
// codes Tencent answers, expiry of the material and of the parameters
// (injected clock), and kill -9 at every step of the import protocol.

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"

	"hsmkms/hsm/p11"
	"hsmkms/softhsm"
)

// importParams is GetParametersForImport's answer, parsed.
type importParams struct {
	token   string
	pub     *rsa.PublicKey
	validTo uint64
}

func getImportParams(t *testing.T, c *tckms.Client, keyID, alg string) (importParams, error) {
	t.Helper()
	req := tckms.NewGetParametersForImportRequest()
	req.KeyId, req.WrappingAlgorithm, req.WrappingKeySpec = common.StringPtr(keyID), common.StringPtr(alg), common.StringPtr("RSA_2048")
	resp, err := c.GetParametersForImport(req)
	if err != nil {
		return importParams{}, err
	}
	r := resp.Response
	der, err := base64.StdEncoding.DecodeString(*r.PublicKey)
	if err != nil {
		t.Fatalf("PublicKey is not base64: %v", err)
	}
	pk, err := x509.ParsePKIXPublicKey(der)
	rpk, ok := pk.(*rsa.PublicKey)
	if err != nil || !ok || rpk.N.BitLen() != 2048 {
		t.Fatalf("PublicKey is not an RSA-2048 SubjectPublicKeyInfo: %T %v", pk, err)
	}
	if *r.KeyId != keyID || *r.ImportToken == "" {
		t.Fatalf("GetParametersForImport %s", resp.ToJsonString())
	}
	return importParams{token: secret(*r.ImportToken), pub: rpk, validTo: *r.ParametersValidTo}, nil
}

// wrapMaterial wraps material as an importer does, with the stdlib.
func wrapMaterial(t *testing.T, p importParams, alg string, material []byte) string {
	t.Helper()
	var h hash.Hash = sha256.New()
	if alg == "RSAES_OAEP_SHA_1" {
		h = sha1.New()
	}
	w, err := rsa.EncryptOAEP(h, rand.Reader, p.pub, material, nil)
	if err != nil {
		t.Fatal(err)
	}
	return secret(base64.StdEncoding.EncodeToString(w))
}

func importMaterial(c *tckms.Client, keyID, wrapped, token string, validTo uint64) error {
	req := tckms.NewImportKeyMaterialRequest()
	req.KeyId, req.EncryptedKeyMaterial, req.ImportToken, req.ValidTo = common.StringPtr(keyID), common.StringPtr(wrapped), common.StringPtr(token), common.Uint64Ptr(validTo)
	_, err := c.ImportKeyMaterial(req)
	return err
}

func describe(t *testing.T, c *tckms.Client, keyID string) *tckms.KeyMetadata {
	t.Helper()
	nextSecond() // {"KeyId":K} is also the body of other actions
	req := tckms.NewDescribeKeyRequest()
	req.KeyId = common.StringPtr(keyID)
	d, err := c.DescribeKey(req)
	if err != nil {
		t.Fatalf("DescribeKey: %v", err)
	}
	return d.Response.KeyMetadata
}

func encryptWith(c *tckms.Client, keyID, pt, ctx string) (string, error) {
	req := tckms.NewEncryptRequest()
	req.KeyId, req.Plaintext = common.StringPtr(keyID), common.StringPtr(b64(pt))
	if ctx != "" {
		req.EncryptionContext = common.StringPtr(ctx)
	}
	r, err := c.Encrypt(req)
	if err != nil {
		return "", err
	}
	return *r.Response.CiphertextBlob, nil
}

// openEnvelope opens a CiphertextBlob with the stdlib under the imported
// key, as README "Ciphertext envelope" documents it: version 1, key UUID,
// key version, IV length, IV, ciphertext||tag; the AAD is the 21-byte
// header followed by the canonical encryption context (a big-endian
// uint32 pair count, then each pair's key and value as a uint32 length and
// bytes, sorted by key).
func openEnvelope(t *testing.T, key []byte, blob string, pairs [][2]string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(blob)
	if err != nil || len(b) < 34 || b[0] != 1 || b[21] != 12 {
		t.Fatalf("not a version-1 envelope: %x", b)
	}
	aad := append([]byte(nil), b[:21]...)
	aad = binary.BigEndian.AppendUint32(aad, uint32(len(pairs)))
	for _, p := range pairs {
		for _, s := range p {
			aad = binary.BigEndian.AppendUint32(aad, uint32(len(s)))
			aad = append(aad, s...)
		}
	}
	block, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(block)
	pt, err := gcm.Open(nil, b[22:34], b[34:], aad)
	if err != nil {
		t.Fatalf("the imported key does not open kmsd's ciphertext: %v", err)
	}
	return pt
}

func TestImportKeyMaterialSDK(t *testing.T) {
	env, tok := crashEnv(t)
	s := startFaulty(t, env)
	c := s.sdk()
	material := make([]byte, 32)
	other := make([]byte, 32)
	rand.Read(material)
	rand.Read(other)
	watchMaterial(material, other)

	// A normal key takes no material; Type 3 does not exist.
	normal := s.createKey("normal")
	if _, err := getImportParams(t, c, normal, "RSAES_OAEP_SHA_1"); sdkCode(err) != "UnsupportedOperation.NotExternalCmk" {
		t.Fatalf("GetParametersForImport on a TENCENT_KMS key: %v", err)
	}
	ck := tckms.NewCreateKeyRequest()
	ck.Alias, ck.Type = common.StringPtr("bad-type"), common.Uint64Ptr(3)
	if _, err := c.CreateKey(ck); sdkCode(err) != "InvalidParameterValue.InvalidType" {
		t.Fatalf("CreateKey Type 3: %v", err)
	}

	ck = tckms.NewCreateKeyRequest()
	ck.Alias, ck.Type = common.StringPtr("byok"), common.Uint64Ptr(2)
	created, err := c.CreateKey(ck)
	if err != nil || *created.Response.KeyState != "PendingImport" {
		t.Fatalf("CreateKey Type 2: %v %v", created, err)
	}
	keyID := *created.Response.KeyId
	if md := describe(t, c, keyID); *md.Origin != "EXTERNAL" || *md.KeyState != "PendingImport" || *md.ValidTo != 0 {
		t.Fatalf("DescribeKey of a new EXTERNAL key: %+v", md)
	}
	ld := tckms.NewListKeyDetailRequest()
	ld.KeyState, ld.Origin = common.Uint64Ptr(4), common.StringPtr("EXTERNAL")
	if l, err := c.ListKeyDetail(ld); err != nil || *l.Response.TotalCount != 1 || *l.Response.KeyMetadatas[0].KeyId != keyID {
		t.Fatalf("ListKeyDetail PendingImport EXTERNAL: %v %v", l, err)
	}
	// Without material: no encryption, no data key, no rotation.
	if _, err := encryptWith(c, keyID, "x", ""); sdkCode(err) != "ResourceUnavailable.CmkStateNotSupport" {
		t.Fatalf("Encrypt on PendingImport: %v", err)
	}
	gdk := tckms.NewGenerateDataKeyRequest()
	gdk.KeyId, gdk.KeySpec = common.StringPtr(keyID), common.StringPtr("AES_256")
	if _, err := c.GenerateDataKey(gdk); sdkCode(err) != "ResourceUnavailable.CmkStateNotSupport" {
		t.Fatalf("GenerateDataKey on PendingImport: %v", err)
	}
	nextSecond()
	ekr := tckms.NewEnableKeyRotationRequest()
	ekr.KeyId = common.StringPtr(keyID)
	if _, err := c.EnableKeyRotation(ekr); sdkCode(err) != "UnsupportedOperation.ExternalCmkCanNotRotate" {
		t.Fatalf("EnableKeyRotation on EXTERNAL: %v", err)
	}

	// PKCS#1 v1.5 is refused (a padding oracle); OAEP-SHA-256 where the
	// module unwraps it (SoftHSM2 2.6 does not: vendors.go).
	if _, err := getImportParams(t, c, keyID, "RSAES_PKCS1_V1_5"); sdkCode(err) != "UnsupportedOperation" {
		t.Fatalf("RSAES_PKCS1_V1_5: %v", err)
	}
	if _, err := getImportParams(t, c, keyID, "RSAES_OAEP_SHA_512"); sdkCode(err) != "InvalidParameter" {
		t.Fatalf("an unknown algorithm: %v", err)
	}
	alg := "RSAES_OAEP_SHA_256"
	p, err := getImportParams(t, c, keyID, alg)
	switch {
	case err == nil:
	case tok.SoftHSM2() && sdkCode(err) == "UnsupportedOperation" && strings.Contains(err.Error(), "SHA-256"):
		alg = "RSAES_OAEP_SHA_1"
		if p, err = getImportParams(t, c, keyID, alg); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("GetParametersForImport %s: %v", alg, err)
	}
	if now := uint64(time.Now().Unix()); p.validTo < now+23*3600 || p.validTo > now+24*3600+60 {
		t.Fatalf("ParametersValidTo %d, want about 24 h from now", p.validTo)
	}

	// Wrong token, wrong material, wrong length: refused, nothing changes.
	wrapped := wrapMaterial(t, p, alg, material)
	if err := importMaterial(c, keyID, wrapped, b64("not the token, 32 bytes long...."), 0); sdkCode(err) != "InvalidParameter" {
		t.Fatalf("a wrong ImportToken: %v", err)
	}
	if err := importMaterial(c, normal, wrapped, p.token, 0); sdkCode(err) != "UnsupportedOperation.NotExternalCmk" {
		t.Fatalf("import into a TENCENT_KMS key: %v", err)
	}
	if err := importMaterial(c, keyID, b64(strings.Repeat("x", 256)), p.token, 0); sdkCode(err) != "InvalidParameter.DecryptMaterialError" {
		t.Fatalf("garbage material: %v", err)
	}
	if err := importMaterial(c, keyID, wrapMaterial(t, p, alg, material[:16]), p.token, 0); sdkCode(err) != "InvalidParameter.DecryptMaterialError" {
		t.Fatalf("a 128-bit key: %v", err)
	}
	if err := importMaterial(c, keyID, wrapped, p.token, 1); sdkCode(err) != "InvalidParameter" {
		t.Fatalf("ValidTo in the past: %v", err)
	}

	// The round trip.
	validTo := uint64(time.Now().Add(time.Hour).Unix())
	if err := importMaterial(c, keyID, wrapped, p.token, validTo); err != nil {
		t.Fatalf("ImportKeyMaterial: %v", err)
	}
	if md := describe(t, c, keyID); *md.KeyState != "Enabled" || *md.Origin != "EXTERNAL" || *md.ValidTo != validTo {
		t.Fatalf("DescribeKey after the import: %+v", md)
	}
	blob, err := encryptWith(c, keyID, "imported and checked", `{"tenant":"a","app":"b"}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := openEnvelope(t, material, blob, [][2]string{{"app", "b"}, {"tenant", "a"}}); string(got) != "imported and checked" {
		t.Fatalf("stdlib decryption: %q", got)
	}
	// A data key under the imported key: its blob opens with the stdlib too.
	gdk = tckms.NewGenerateDataKeyRequest()
	gdk.KeyId, gdk.KeySpec = common.StringPtr(keyID), common.StringPtr("AES_256")
	dk, err := c.GenerateDataKey(gdk)
	if err != nil {
		t.Fatalf("GenerateDataKey under the imported key: %v", err)
	}
	plainDK, _ := base64.StdEncoding.DecodeString(*dk.Response.Plaintext)
	if got := openEnvelope(t, material, *dk.Response.CiphertextBlob, nil); !bytesEqual(got, plainDK) || len(got) != 32 {
		t.Fatal("the data key's blob does not hold the data key")
	}
	// The token is used up; a token for this key does not import elsewhere.
	if err := importMaterial(c, keyID, wrapped, p.token, 0); sdkCode(err) != "InvalidParameter" {
		t.Fatalf("a used ImportToken: %v", err)
	}
	ck = tckms.NewCreateKeyRequest()
	ck.Alias, ck.Type = common.StringPtr("byok-2"), common.Uint64Ptr(2)
	created2, err := c.CreateKey(ck)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := getImportParams(t, c, keyID, alg)
	if err != nil {
		t.Fatal(err)
	}
	if err := importMaterial(c, *created2.Response.KeyId, wrapMaterial(t, p2, alg, other), p2.token, 0); sdkCode(err) != "InvalidParameter" {
		t.Fatalf("a token of another key: %v", err)
	}
	// Different material is refused, the same is taken (ValidTo now never).
	if err := importMaterial(c, keyID, wrapMaterial(t, p2, alg, other), p2.token, 0); sdkCode(err) != "InvalidParameterValue.MaterialNotMatch" {
		t.Fatalf("different material: %v", err)
	}
	if err := importMaterial(c, keyID, wrapMaterial(t, p2, alg, material), p2.token, 0); err != nil {
		t.Fatalf("the same material again: %v", err)
	}
	if md := describe(t, c, keyID); *md.KeyState != "Enabled" || *md.ValidTo != 0 {
		t.Fatalf("DescribeKey after the re-import: %+v", md)
	}

	// DeleteImportedKeyMaterial: PendingImport, nothing decrypts; the
	// same material brings the old ciphertexts back.
	nextSecond()
	del := tckms.NewDeleteImportedKeyMaterialRequest()
	del.KeyId = common.StringPtr(keyID)
	if _, err := c.DeleteImportedKeyMaterial(del); err != nil {
		t.Fatal(err)
	}
	dec := tckms.NewDecryptRequest()
	dec.CiphertextBlob, dec.EncryptionContext = common.StringPtr(blob), common.StringPtr(`{"app":"b","tenant":"a"}`)
	if _, err := c.Decrypt(dec); sdkCode(err) != "ResourceUnavailable.CmkStateNotSupport" {
		t.Fatalf("Decrypt without material: %v", err)
	}
	p3, err := getImportParams(t, c, keyID, alg)
	if err != nil {
		t.Fatal(err)
	}
	if err := importMaterial(c, keyID, wrapMaterial(t, p3, alg, other), p3.token, 0); sdkCode(err) != "InvalidParameterValue.MaterialNotMatch" {
		t.Fatalf("different material after deletion: %v", err)
	}
	if err := importMaterial(c, keyID, wrapMaterial(t, p3, alg, material), p3.token, uint64(time.Now().Add(time.Hour).Unix())); err != nil {
		t.Fatal(err)
	}
	dec = tckms.NewDecryptRequest()
	dec.CiphertextBlob, dec.EncryptionContext = common.StringPtr(blob), common.StringPtr(`{"app":"b","tenant":"a"}`)
	if dr, err := c.Decrypt(dec); err != nil || *dr.Response.Plaintext != b64("imported and checked") {
		t.Fatalf("Decrypt after the re-import: %v", err)
	}
	pending, err := getImportParams(t, c, keyID, alg) // left unused: expires
	if err != nil {
		t.Fatal(err)
	}

	// kmsctl: an EXTERNAL key made and filled from a key file, wrapped
	// locally; its ciphertexts open under the file's key.
	ctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "kmsctl"), append([]string{"-endpoint", s.url}, args...)...)
		cmd.Env = append(os.Environ(), "TENCENTCLOUD_SECRET_ID="+adminID, "TENCENTCLOUD_SECRET_KEY="+adminKey)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kmsctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := ctl("create-key", "-alias", "from-kmsctl", "-type", "2")
	ctlKey := strings.Fields(out)[1]
	if !strings.Contains(out, "PendingImport") {
		t.Fatalf("kmsctl create-key -type 2:\n%s", out)
	}
	keyFile := filepath.Join(t.TempDir(), "aes.key")
	ctlMaterial := make([]byte, 32)
	rand.Read(ctlMaterial)
	watchMaterial(ctlMaterial)
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(ctlMaterial)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := ctl("import-key", "-key-id", ctlKey, "-key-file", keyFile); !strings.Contains(out, "Enabled") {
		t.Fatalf("kmsctl import-key:\n%s", out)
	}
	ctlBlob, err := encryptWith(c, ctlKey, "via kmsctl", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := openEnvelope(t, ctlMaterial, ctlBlob, nil); string(got) != "via kmsctl" {
		t.Fatalf("stdlib decryption %q", got)
	}
	s.stop()

	// Two hours later the material has expired: the maintenance job
	// destroys it and the key is PendingImport again.
	later := append(env, "KMSD_CLOCK_OFFSET=2h", "KMSD_MAINTENANCE_INTERVAL=100ms")
	s = startFaulty(t, later)
	c = s.sdk()
	waitState(t, c, keyID, "PendingImport")
	if _, err := encryptWith(c, keyID, "y", ""); sdkCode(err) != "ResourceUnavailable.CmkStateNotSupport" {
		t.Fatalf("Encrypt after expiry: %v", err)
	}
	s.stop()

	// A day later the parameters have expired too: refused as expired,
	// and their wrapping key is gone from the token.
	s = startFaulty(t, append(env, "KMSD_CLOCK_OFFSET=25h", "KMSD_MAINTENANCE_INTERVAL=100ms"))
	c = s.sdk()
	if err := importMaterial(c, keyID, wrapMaterial(t, pending, alg, material), pending.token, 0); sdkCode(err) != "ResourceUnavailable.TokenExpired" {
		t.Fatalf("expired parameters: %v", err)
	}
	waitLog(t, s, "wrapping key of expired import parameters destroyed")
	if rec := s.recovery(); rec["orphans"] != 0 || rec["missing"] != 0 || rec["unresolved"] != 0 {
		t.Fatalf("recovery %v", rec)
	}
	s.stop()
	secrets, wrapping := tokenObjects(t, tok)
	// The token holds the normal key and kmsctl's (byok-2 never got
	// material, byok's expired), and the wrapping keys of the parameters
	// issued and neither used nor expired: none.
	if secrets != 2 || wrapping != 0 {
		t.Fatalf("token holds %d CMK objects and %d wrapping keys, want 2 and 0", secrets, wrapping)
	}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// watchMaterial registers key material (raw, base64, hex) with the leak
// check: none may reach kmsd's log or audit trail.
func watchMaterial(keys ...[]byte) {
	for _, k := range keys {
		secret(string(k))
		secret(hex.EncodeToString(k))
	}
}

func waitState(t *testing.T, c *tckms.Client, keyID, state string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if md := describe(t, c, keyID); *md.KeyState == state {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("key %s is %s, want %s", keyID, *md.KeyState, state)
		}
	}
}

func waitLog(t *testing.T, s *server, text string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(s.stderr.String(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("kmsd never logged %q\n%s", text, s.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tokenObjects counts, with kmsd stopped, the CMK objects (16-byte ids) and
// the wrapping keys on the token.
func tokenObjects(t *testing.T, tok softhsm.Token) (secrets, wrapping int) {
	t.Helper()
	for _, kv := range tok.Env() { // the module's configuration (SOFTHSM2_CONF)
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := p11.OpenToken(ctx, p11.Config{ModulePath: tok.Module, TokenLabel: tok.Label, TokenURI: tok.URI,
		InitArgs: tok.InitArgs, PIN: tok.PIN, Sessions: 1})
	if err != nil {
		t.Fatalf("OpenToken: %v", err)
	}
	defer h.Close()
	ids, err := h.KeyIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if len(id) == 16 {
			secrets++
		}
	}
	w, err := h.WrappingKeyIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return secrets, len(w)
}

// kill -9 at each step of GetParametersForImport, ImportKeyMaterial and
// DeleteImportedKeyMaterial: after the restart nothing is unresolved,
// missing or orphaned, the token holds exactly what the store says, and
// the import works on.
func TestCrashImport(t *testing.T) {
	// "import:params-intent" and "unload:intent" (an intent and nothing
	// else) are the case every crash test of CreateKey covers.
	points := []string{"import:wrapping-generated", "import:intent", "import:unwrapped", "import:params-deleted", "unload:written"}
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			env, tok := crashEnv(t)
			material := make([]byte, 32)
			rand.Read(material)
			watchMaterial(material)
			s := startFaulty(t, append(env, "KMSD_FAULT_POINT="+point))
			c := s.sdk()
			ck := tckms.NewCreateKeyRequest()
			ck.Alias, ck.Type = common.StringPtr("crash"), common.Uint64Ptr(2)
			created, err := c.CreateKey(ck)
			if err != nil {
				t.Fatal(err)
			}
			keyID := *created.Response.KeyId
			const alg = "RSAES_OAEP_SHA_1"
			var p importParams
			if point != "import:params-intent" && point != "import:wrapping-generated" {
				if p, err = getImportParams(t, c, keyID, alg); err != nil {
					t.Fatal(err)
				}
			}
			switch {
			case strings.HasPrefix(point, "unload"):
				if err := importMaterial(c, keyID, wrapMaterial(t, p, alg, material), p.token, 0); err != nil {
					t.Fatal(err)
				}
				nextSecond()
				del := tckms.NewDeleteImportedKeyMaterialRequest()
				del.KeyId = common.StringPtr(keyID)
				_, err = c.DeleteImportedKeyMaterial(del)
			case point == "import:params-intent" || point == "import:wrapping-generated":
				_, err = getImportParams(t, c, keyID, alg)
			default:
				err = importMaterial(c, keyID, wrapMaterial(t, p, alg, material), p.token, 0)
			}
			if err == nil {
				t.Fatal("answered although kmsd was killed")
			}
			s.killed()

			// Restarted: nothing unresolved, missing or orphaned (an
			// object of a key the store says has no material counts as
			// an orphan), and the key in the state the store committed.
			s = startFaulty(t, env)
			if rec := s.recovery(); rec["orphans"] != 0 || rec["missing"] != 0 || rec["unresolved"] != 0 {
				t.Fatalf("recovery %v", rec)
			}
			c = s.sdk()
			state := *describe(t, c, keyID).KeyState
			wantState := map[string]string{"import:params-deleted": "Enabled", "unload:intent": "Enabled"}[point]
			if wantState == "" {
				wantState = "PendingImport"
			}
			if state != wantState {
				t.Fatalf("state after the crash %s, want %s", state, wantState)
			}
			// The service works on: (re-)import, encrypt, check with the stdlib.
			if state == "PendingImport" {
				p, err := getImportParams(t, c, keyID, alg)
				if err != nil {
					t.Fatal(err)
				}
				if err := importMaterial(c, keyID, wrapMaterial(t, p, alg, material), p.token, 0); err != nil {
					t.Fatalf("import after the crash: %v", err)
				}
			}
			blob, err := encryptWith(c, keyID, "after the crash", "")
			if err != nil {
				t.Fatal(err)
			}
			if got := openEnvelope(t, material, blob, nil); string(got) != "after the crash" {
				t.Fatalf("stdlib decryption %q", got)
			}
			s.stop()
			// On the token: the key's one object (a second one with its id
			// would be listed twice) and the wrapping keys of parameters
			// issued but not used.
			leftParams := 0
			if point == "import:intent" || point == "import:unwrapped" {
				leftParams = 1
			}
			if secrets, wrapping := tokenObjects(t, tok); secrets != 1 || wrapping != leftParams {
				t.Fatalf("token holds %d CMK objects and %d wrapping keys, want 1 and %d", secrets, wrapping, leftParams)
			}
		})
	}
}

// Two nodes on one PostgreSQL database and one token: parameters issued
// by one node are used on the other, and the material imported on one
// expires by the background jobs of the other (whose clock runs two hours
// ahead), which the first then serves as PendingImport.
func TestClusterImportExpiry(t *testing.T) {
	c := newCluster(t)
	b := c.startFaulty("KMSD_CLOCK_OFFSET=2h", "KMSD_MAINTENANCE_INTERVAL=100ms")
	within(t, 10*time.Second, "B runs the background jobs", func() bool {
		return strings.Contains(b.stderr.String(), "this node now runs the background jobs")
	})
	a := c.start()
	ca, cb := a.sdk(), b.sdk()
	material := make([]byte, 32)
	rand.Read(material)
	watchMaterial(material)

	ck := tckms.NewCreateKeyRequest()
	ck.Alias, ck.Type = common.StringPtr("shared-byok"), common.Uint64Ptr(2)
	created, err := ca.CreateKey(ck)
	if err != nil {
		t.Fatal(err)
	}
	keyID := *created.Response.KeyId
	const alg = "RSAES_OAEP_SHA_1"
	p, err := getImportParams(t, cb, keyID, alg)
	if err != nil {
		t.Fatal(err)
	}
	if err := importMaterial(ca, keyID, wrapMaterial(t, p, alg, material), p.token, uint64(time.Now().Add(time.Hour).Unix())); err != nil {
		t.Fatalf("import on A with B's parameters: %v", err)
	}
	waitState(t, ca, keyID, "PendingImport")
	if _, err := encryptWith(ca, keyID, "too late", ""); sdkCode(err) != "ResourceUnavailable.CmkStateNotSupport" {
		t.Fatalf("Encrypt on A after B expired the material: %v", err)
	}
	if !strings.Contains(b.stderr.String(), "imported key material destroyed") {
		t.Fatalf("B did not destroy the material:\n%s", b.stderr.String())
	}
	a.stop()
	b.stop()
	if secrets, wrapping := tokenObjects(t, c.tok); secrets != 0 || wrapping != 0 {
		t.Fatalf("token holds %d CMK objects and %d wrapping keys, want none", secrets, wrapping)
	}
}
