package main

// kube-apiserver's own KMS v2 code (k8s.io/apiserver: the
// EncryptionConfiguration loader, its Status probe and DEK-seed rotation,
// the envelope transformer) against the plugin and a real kmsd. No
// kube-apiserver binary or etcd: the transformer's input and output are
// what the apiserver writes to and reads from etcd.

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
)

// defaultSocket is the plugin's default -socket, as the README's
// EncryptionConfiguration names it.
const defaultSocket = "/var/run/hsmkms/kms-plugin.sock"

// TestKubeAPIServerEnvelope loads the README's EncryptionConfiguration
// with the apiserver's loader, stores a Secret through the resulting
// transformer, rotates the CMK, and checks what storage migration relies
// on: a restarted apiserver reads the old object, flags it stale (its
// key_id is no longer the current one), and rewrites it under the new
// version, which is then not stale.
func TestKubeAPIServerEnvelope(t *testing.T) {
	snippet, err := os.ReadFile("testdata/encryption-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, snippet) || !bytes.Contains(snippet, []byte(defaultSocket)) {
		t.Fatal("README.md does not show testdata/encryption-config.yaml (with the default socket) verbatim")
	}

	k := newKMSD(t)
	keyID := k.createKey("k8s-secrets")
	p := startPlugin(t, "-endpoint", k.url(), "-key-id", keyID, "-credential-file", k.credential("plugin", keyID, pluginActions...),
		"-status-cache", "100ms")
	cfg := filepath.Join(t.TempDir(), "encryption-config.yaml")
	writeFile(t, cfg, bytes.ReplaceAll(snippet, []byte(defaultSocket), []byte(p.socket)))

	// load is one apiserver start: the loader probes Status and has the
	// plugin seal a fresh DEK seed before it returns.
	load := func(name string) value.Transformer {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		ec, err := encryptionconfig.LoadEncryptionConfig(ctx, cfg, false, name)
		if err != nil {
			t.Fatalf("LoadEncryptionConfig: %v", err)
		}
		for _, hc := range ec.HealthChecks {
			if err := hc.Check(httptest.NewRequest("GET", "/healthz", nil)); err != nil {
				t.Fatalf("apiserver health check %s: %v", hc.Name(), err)
			}
		}
		tr, ok := ec.Transformers[schema.GroupResource{Resource: "secrets"}]
		if !ok {
			t.Fatalf("no transformer for secrets: %v", ec.Transformers)
		}
		return tr
	}
	ctx := context.Background()
	dataCtx := value.DefaultContext("/registry/secrets/default/db-password")
	secret := []byte(`{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db-password","namespace":"default"},"data":{"password":"aHVudGVyMg=="}}`)

	apiserver1 := load("apiserver-1")
	stored, err := apiserver1.TransformToStorage(ctx, secret, dataCtx)
	if err != nil {
		t.Fatalf("TransformToStorage: %v", err)
	}
	if !bytes.HasPrefix(stored, []byte("k8s:enc:kms:v2:hsmkms:")) || bytes.Contains(stored, []byte("aHVudGVyMg")) {
		t.Fatalf("stored object %q", stored)
	}
	got, stale, err := apiserver1.TransformFromStorage(ctx, stored, dataCtx)
	if err != nil || stale || !bytes.Equal(got, secret) {
		t.Fatalf("TransformFromStorage: stale %v, %v", stale, err)
	}
	// Another object's path is authenticated data: a copied value fails.
	if _, _, err := apiserver1.TransformFromStorage(ctx, stored, value.DefaultContext("/registry/secrets/default/other")); err == nil {
		t.Fatal("an object moved to another key opened")
	}

	k.call("RotateKey", map[string]any{"KeyId": keyID}, nil)
	eventually(t, 10*time.Second, "the plugin reports the new version", func() bool {
		return statusOf(t, p).KeyId == keyID+"/v2"
	})

	// A restarted apiserver (or the first one, within its Status poll
	// interval of a minute) sees the new key_id: old objects are stale.
	apiserver2 := load("apiserver-2")
	got, stale, err = apiserver2.TransformFromStorage(ctx, stored, dataCtx)
	if err != nil || !stale || !bytes.Equal(got, secret) {
		t.Fatalf("an object sealed before the rotation: stale %v, %v; want it readable and stale", stale, err)
	}
	// kubectl replace rewrites it: under the new version, not stale.
	rewritten, err := apiserver2.TransformToStorage(ctx, got, dataCtx)
	if err != nil {
		t.Fatal(err)
	}
	if _, stale, err := apiserver2.TransformFromStorage(ctx, rewritten, dataCtx); err != nil || stale {
		t.Fatalf("the rewritten object: stale %v, %v", stale, err)
	}
	// The first apiserver still reads both (the plugin decrypts any version).
	for _, obj := range [][]byte{stored, rewritten} {
		if got, _, err := apiserver1.TransformFromStorage(ctx, obj, dataCtx); err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("apiserver-1 reading after the rotation: %v", err)
		}
	}

	// The plugin never saw the Secret itself, only DEK seeds.
	if strings.Contains(p.log.String(), "aHVudGVyMg") {
		t.Fatal("the Secret reached the plugin's log")
	}
}
