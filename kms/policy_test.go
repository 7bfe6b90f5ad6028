package kms

import (
	"context"
	"errors"
	"testing"
)

func TestPolicyAllows(t *testing.T) {
	const k1, k2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
	doc := `{"version":"2.0","statement":[
		{"effect":"allow","action":["kms:Encrypt","kms:Decrypt"],"resource":["` + k1 + `"]},
		{"effect":"allow","action":"kms:Describe*","resource":"*"},
		{"effect":"allow","action":["kms:*"],"resource":["qcs::kms:ap-guangzhou:uin/1:key/` + k2 + `"]},
		{"effect":"deny","action":["kms:Decrypt"],"resource":["` + k2 + `"]}]}`
	p, err := ParsePolicy(doc)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		action, resource string
		want             bool
	}{
		{"kms:Encrypt", k1, true},
		{"kms:encrypt", k1, true},
		{"kms:Decrypt", k1, true},
		{"kms:Encrypt", k2, true},
		{"kms:Decrypt", k2, false}, // deny wins over the kms:* allow
		{"kms:GenerateDataKey", k1, false},
		{"kms:DescribeKey", k1, true},
		{"kms:CreateKey", "*", false},
		{"kms:Encrypt", "33333333-3333-4333-8333-333333333333", false},
	}
	for _, tt := range tests {
		if got := p.Allows(tt.action, tt.resource); got != tt.want {
			t.Errorf("Allows(%s, %s) = %v, want %v", tt.action, tt.resource, got, tt.want)
		}
	}
	if !AdminPolicy().Allows("kms-admin:CreateCredential", "*") || !AdminPolicy().Allows("kms:Decrypt", "11111111-1111-4111-8111-111111111111") {
		t.Error("admin policy refuses a management action")
	}
}

func TestParsePolicyRejects(t *testing.T) {
	for _, doc := range []string{
		``, `[]`, `{"version":"1.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]}`,
		`{"version":"2.0","statement":[]}`,
		`{"version":"2.0","statement":[{"effect":"maybe","action":["kms:*"],"resource":["*"]}]}`,
		`{"version":"2.0","statement":[{"effect":"allow","action":["cvm:*"],"resource":["*"]}]}`,
		`{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"]}]}`,
		`{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"],"condition":{}}]}`,
		`{"version":"2.0","statement":[{"effect":"allow","action":[1],"resource":["*"]}]}`,
		`{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]} {}`,
	} {
		if _, err := ParsePolicy(doc); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("ParsePolicy(%s) = %v, want ErrInvalidPolicy", doc, err)
		}
	}
	// Data after the object, stray closing delimiters included, which
	// json.Decoder.More does not report (found by
	// FuzzStoredPolicyNeverWidens): refused when saved and when read back.
	for _, doc := range []string{
		`{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]}]`,
		`{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]}}`,
		`{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]} x`,
		`{"version":"2.0","statement":[{"effect":"allow","action":["kms:*"],"resource":["*"]}]} {}`,
	} {
		if _, err := ParsePolicy(doc); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("ParsePolicy(%s) = %v, want ErrInvalidPolicy", doc, err)
		}
		if _, _, err := parseStoredPolicy(doc); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("parseStoredPolicy(%s) = %v, want ErrInvalidPolicy", doc, err)
		}
	}
	// White space after the object is not data.
	doc := "{\"version\":\"2.0\",\"statement\":[{\"effect\":\"allow\",\"action\":[\"kms:*\"],\"resource\":[\"*\"]}]}\n\t "
	if _, err := ParsePolicy(doc); err != nil {
		t.Errorf("ParsePolicy with trailing white space: %v", err)
	}
}

func TestAuthorizeNeedsPrincipal(t *testing.T) {
	if err := authorize(context.Background(), "kms:Encrypt", "*"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("anonymous call: %v", err)
	}
	ctx := WithPrincipal(context.Background(), &Principal{SecretID: "AKID", Policy: AdminPolicy()})
	if err := authorize(ctx, "kms:Encrypt", "*"); err != nil {
		t.Fatal(err)
	}
}
