package main_test

// The AWS KMS API through the real kmsd with the AWS SDK for Go v2
// (service/kms v1.63.0): every action served, the refused ones, key names
// (id, ARN, alias, alias ARN), policies, SigV4 failures signed with the
// SDK's own v4 signer, each error type's HTTP status and __type, and the
// round trip between the AWS API and the Tencent API 3.0.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"

	"hsmkms/softhsm"
)

const (
	awsRegion  = "eu-west-1"
	awsAccount = "123456789012"
)

// newAWSServer starts kmsd with the AWS API on (two regions) and returns
// it with its data directory.
func newAWSServer(t *testing.T, extra ...string) (*server, string) {
	t.Helper()
	tok := softhsm.NewTokenNoEnv(t)
	data := t.TempDir()
	env := append(kmsdEnv(tok, data), "KMSD_AWS_REGIONS="+awsRegion+",us-east-1", "KMSD_AWS_ACCOUNT_ID="+awsAccount)
	bootstrap(t, env)
	return startKMSD(t, append(env, extra...)), data
}

// auditedAWS returns the audit lines of the AWS API with action and code.
func auditedAWS(t *testing.T, data, action, code string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, m := range auditLines(t, data) {
		if m["protocol"] == "aws" && (action == "" || m["action"] == action) && m["code"] == code {
			out = append(out, m)
		}
	}
	return out
}

// awsClient is the AWS SDK's KMS client for kmsd with a credential, no
// retries (each call is one request).
func awsClient(s *server, id, key string) *awskms.Client {
	return awskms.New(awskms.Options{
		Region:       awsRegion,
		BaseEndpoint: aws.String(s.url),
		Credentials:  credentials.NewStaticCredentialsProvider(id, key, ""),
		Retryer:      aws.NopRetryer{},
	})
}

// awsCode returns the error type of an AWS SDK error and its HTTP status.
func awsCode(err error) (string, int) {
	if err == nil {
		return "", 200
	}
	var ae smithy.APIError
	var re interface{ HTTPStatusCode() int }
	status := 0
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	if errors.As(err, &ae) {
		return ae.ErrorCode(), status
	}
	return "not an API error: " + err.Error(), status
}

func wantAWSErr(t *testing.T, what string, err error, typ string, status int) {
	t.Helper()
	got, st := awsCode(err)
	if got != typ || st != status {
		t.Errorf("%s: got %s (HTTP %d), want %s (HTTP %d): %v", what, got, st, typ, status, err)
	}
}

func TestAWSSDK(t *testing.T) {
	s, data := newAWSServer(t)
	if want := `"aws_regions":["` + awsRegion + `","us-east-1"]`; !strings.Contains(s.stderr.String(), want) {
		t.Fatalf("the start-up line does not say %s:\n%s", want, s.stderr.String())
	}
	ctx := context.Background()
	c := awsClient(s, adminID, adminKey)

	// CreateKey (symmetric default), DescribeKey by every name.
	ck, err := c.CreateKey(ctx, &awskms.CreateKeyInput{Description: aws.String("made by the AWS SDK")})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	md := ck.KeyMetadata
	id := *md.KeyId
	arn := "arn:aws:kms:" + awsRegion + ":" + awsAccount + ":key/" + id
	if *md.Arn != arn || md.KeyState != types.KeyStateEnabled || !md.Enabled || md.KeySpec != types.KeySpecSymmetricDefault ||
		md.KeyUsage != types.KeyUsageTypeEncryptDecrypt || *md.AWSAccountId != awsAccount || *md.Description != "made by the AWS SDK" || md.CreationDate.IsZero() {
		t.Fatalf("CreateKey metadata %+v", md)
	}
	if _, err := c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/app-key"), TargetKeyId: aws.String(id)}); err != nil {
		t.Fatalf("CreateAlias: %v", err)
	}
	for _, name := range []string{id, arn, "alias/app-key", "arn:aws:kms:us-east-1:" + awsAccount + ":alias/app-key"} {
		d, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(name), GrantTokens: []string{"ignored"}})
		if err != nil || *d.KeyMetadata.KeyId != id {
			t.Fatalf("DescribeKey %s: %v", name, err)
		}
	}
	for _, name := range []string{"alias/none", "arn:aws:kms:" + awsRegion + ":999999999999:key/" + id, "arn:aws:kms:ap-south-1:" + awsAccount + ":key/" + id, "not-a-key", "11111111-2222-3333-4444-555555555555"} {
		_, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(name)})
		wantAWSErr(t, "DescribeKey "+name, err, "NotFoundException", 400)
	}

	// Encrypt / Decrypt with a context, with and without KeyId.
	pt := []byte(secret("the AWS SDK's plaintext: +/= ü"))
	ecx := map[string]string{"app": "billing", "env": "prod"}
	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String("alias/app-key"), Plaintext: pt, EncryptionContext: ecx})
	if err != nil || *enc.KeyId != arn || enc.EncryptionAlgorithm != types.EncryptionAlgorithmSpecSymmetricDefault {
		t.Fatalf("Encrypt: %v %+v", err, enc)
	}
	for _, kid := range []*string{nil, aws.String(id), aws.String(arn), aws.String("alias/app-key")} {
		dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ecx, KeyId: kid})
		if err != nil || !bytes.Equal(dec.Plaintext, pt) || *dec.KeyId != arn {
			t.Fatalf("Decrypt (KeyId %v): %v", kid, err)
		}
	}
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"app": "billing"}})
	wantAWSErr(t, "Decrypt with another context", err, "InvalidCiphertextException", 400)
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: []byte("garbage"), EncryptionContext: ecx})
	wantAWSErr(t, "Decrypt garbage", err, "InvalidCiphertextException", 400)

	other, err := c.CreateKey(ctx, &awskms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	otherID := *other.KeyMetadata.KeyId
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ecx, KeyId: aws.String(otherID)})
	wantAWSErr(t, "Decrypt with another key's KeyId", err, "IncorrectKeyException", 400)

	// ReEncrypt to the other key, with a new context.
	re, err := c.ReEncrypt(ctx, &awskms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: ecx, SourceKeyId: aws.String(id),
		DestinationKeyId: aws.String(otherID), DestinationEncryptionContext: map[string]string{"k": "v"}})
	if err != nil || *re.SourceKeyId != arn || !strings.HasSuffix(*re.KeyId, otherID) {
		t.Fatalf("ReEncrypt: %v", err)
	}
	if dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: re.CiphertextBlob, EncryptionContext: map[string]string{"k": "v"}}); err != nil || !bytes.Equal(dec.Plaintext, pt) {
		t.Fatalf("Decrypt the re-encrypted blob: %v", err)
	}
	_, err = c.ReEncrypt(ctx, &awskms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: ecx, SourceKeyId: aws.String(otherID), DestinationKeyId: aws.String(id)})
	wantAWSErr(t, "ReEncrypt with another SourceKeyId", err, "IncorrectKeyException", 400)

	// Data keys and random bytes.
	for _, in := range []*awskms.GenerateDataKeyInput{
		{KeyId: aws.String(id), KeySpec: types.DataKeySpecAes256, EncryptionContext: ecx},
		{KeyId: aws.String("alias/app-key"), KeySpec: types.DataKeySpecAes128},
		{KeyId: aws.String(arn), NumberOfBytes: aws.Int32(7)},
	} {
		dk, err := c.GenerateDataKey(ctx, in)
		if err != nil {
			t.Fatalf("GenerateDataKey %+v: %v", in, err)
		}
		want := map[types.DataKeySpec]int{types.DataKeySpecAes256: 32, types.DataKeySpecAes128: 16}[in.KeySpec]
		if in.NumberOfBytes != nil {
			want = int(*in.NumberOfBytes)
		}
		if len(dk.Plaintext) != want || *dk.KeyId != arn {
			t.Fatalf("GenerateDataKey: %d bytes, key %s", len(dk.Plaintext), *dk.KeyId)
		}
		dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: dk.CiphertextBlob, EncryptionContext: in.EncryptionContext})
		if err != nil || !bytes.Equal(dec.Plaintext, dk.Plaintext) {
			t.Fatalf("Decrypt a data key: %v", err)
		}
	}
	_, err = c.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: aws.String(id)})
	wantAWSErr(t, "GenerateDataKey without a length", err, "ValidationException", 400)
	wp, err := c.GenerateDataKeyWithoutPlaintext(ctx, &awskms.GenerateDataKeyWithoutPlaintextInput{KeyId: aws.String(id), KeySpec: types.DataKeySpecAes256, EncryptionContext: ecx})
	if err != nil {
		t.Fatalf("GenerateDataKeyWithoutPlaintext: %v", err)
	}
	if dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: wp.CiphertextBlob, EncryptionContext: ecx}); err != nil || len(dec.Plaintext) != 32 {
		t.Fatalf("Decrypt a data key made without plaintext: %v", err)
	}
	rnd, err := c.GenerateRandom(ctx, &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(48)})
	if err != nil || len(rnd.Plaintext) != 48 {
		t.Fatalf("GenerateRandom: %v", err)
	}

	// ListKeys pages with Marker and Limit.
	var listed []string
	var marker *string
	for pages := 0; ; pages++ {
		lk, err := c.ListKeys(ctx, &awskms.ListKeysInput{Limit: aws.Int32(1), Marker: marker})
		if err != nil {
			t.Fatalf("ListKeys: %v", err)
		}
		for _, k := range lk.Keys {
			listed = append(listed, *k.KeyId)
			if *k.KeyArn != "arn:aws:kms:"+awsRegion+":"+awsAccount+":key/"+*k.KeyId {
				t.Fatalf("ListKeys ARN %s", *k.KeyArn)
			}
		}
		if !lk.Truncated {
			break
		}
		marker = lk.NextMarker
	}
	if strings.Join(listed, ",") != id+","+otherID {
		t.Fatalf("ListKeys: %v, want %s and %s", listed, id, otherID)
	}
	_, err = c.ListKeys(ctx, &awskms.ListKeysInput{Marker: aws.String("garbage")})
	wantAWSErr(t, "ListKeys with a bad marker", err, "InvalidMarkerException", 400)

	// Aliases.
	la, err := c.ListAliases(ctx, &awskms.ListAliasesInput{})
	if err != nil || len(la.Aliases) != 1 || *la.Aliases[0].AliasName != "alias/app-key" || *la.Aliases[0].TargetKeyId != id ||
		*la.Aliases[0].AliasArn != "arn:aws:kms:"+awsRegion+":"+awsAccount+":alias/app-key" {
		t.Fatalf("ListAliases: %v %+v", err, la)
	}
	_, err = c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/app-key"), TargetKeyId: aws.String(otherID)})
	wantAWSErr(t, "CreateAlias of a name in use", err, "AlreadyExistsException", 400)
	_, err = c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/second"), TargetKeyId: aws.String(id)})
	wantAWSErr(t, "CreateAlias of a second alias", err, "LimitExceededException", 400)
	_, err = c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/bad/name"), TargetKeyId: aws.String(otherID)})
	wantAWSErr(t, "CreateAlias with a / in the name", err, "InvalidAliasNameException", 400)
	if _, err := c.UpdateAlias(ctx, &awskms.UpdateAliasInput{AliasName: aws.String("alias/app-key"), TargetKeyId: aws.String(otherID)}); err != nil {
		t.Fatalf("UpdateAlias: %v", err)
	}
	if d, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("alias/app-key")}); err != nil || *d.KeyMetadata.KeyId != otherID {
		t.Fatalf("the alias does not name the key UpdateAlias gave it to: %v", err)
	}
	la, err = c.ListAliases(ctx, &awskms.ListAliasesInput{KeyId: aws.String(id)})
	if err != nil || len(la.Aliases) != 0 {
		t.Fatalf("ListAliases of the alias's former key: %v %+v", err, la)
	}
	if _, err := c.DeleteAlias(ctx, &awskms.DeleteAliasInput{AliasName: aws.String("alias/app-key")}); err != nil {
		t.Fatalf("DeleteAlias: %v", err)
	}
	_, err = c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("alias/app-key")})
	wantAWSErr(t, "DescribeKey of a deleted alias", err, "NotFoundException", 400)
	_, err = c.DeleteAlias(ctx, &awskms.DeleteAliasInput{AliasName: aws.String("alias/app-key")})
	wantAWSErr(t, "DeleteAlias of a deleted alias", err, "NotFoundException", 400)

	// Rotation.
	if _, err := c.EnableKeyRotation(ctx, &awskms.EnableKeyRotationInput{KeyId: aws.String(id), RotationPeriodInDays: aws.Int32(90)}); err != nil {
		t.Fatalf("EnableKeyRotation: %v", err)
	}
	rs, err := c.GetKeyRotationStatus(ctx, &awskms.GetKeyRotationStatusInput{KeyId: aws.String(id)})
	if err != nil || !rs.KeyRotationEnabled || *rs.RotationPeriodInDays != 90 || rs.NextRotationDate == nil {
		t.Fatalf("GetKeyRotationStatus: %v %+v", err, rs)
	}
	if _, err := c.RotateKeyOnDemand(ctx, &awskms.RotateKeyOnDemandInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("RotateKeyOnDemand: %v", err)
	}
	if dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ecx}); err != nil || !bytes.Equal(dec.Plaintext, pt) {
		t.Fatalf("Decrypt after rotation: %v", err)
	}
	if _, err := c.DisableKeyRotation(ctx, &awskms.DisableKeyRotationInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("DisableKeyRotation: %v", err)
	}
	_, err = c.EnableKeyRotation(ctx, &awskms.EnableKeyRotationInput{KeyId: aws.String(id), RotationPeriodInDays: aws.Int32(2560)})
	wantAWSErr(t, "EnableKeyRotation beyond 365 days", err, "ValidationException", 400)

	// ScheduleKeyDeletion of an Enabled key (as AWS: disabled in the same
	// change); cancelled, it is Disabled.
	if sd, err := c.ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: aws.String(otherID)}); err != nil || *sd.PendingWindowInDays != 30 {
		t.Fatalf("ScheduleKeyDeletion of an Enabled key: %v", err)
	}
	if cd, err := c.CancelKeyDeletion(ctx, &awskms.CancelKeyDeletionInput{KeyId: aws.String(otherID)}); err != nil || !strings.HasSuffix(*cd.KeyId, otherID) {
		t.Fatalf("CancelKeyDeletion: %v", err)
	}
	if d, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(otherID)}); err != nil || d.KeyMetadata.KeyState != types.KeyStateDisabled {
		t.Fatalf("a cancelled deletion leaves the key %v (%v), want Disabled", d.KeyMetadata.KeyState, err)
	}

	// States: DisabledException, KMSInvalidStateException.
	if _, err := c.DisableKey(ctx, &awskms.DisableKeyInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("DisableKey: %v", err)
	}
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: pt})
	wantAWSErr(t, "Encrypt under a disabled key", err, "DisabledException", 400)
	sd, err := c.ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: aws.String(id), PendingWindowInDays: aws.Int32(7)})
	if err != nil || sd.KeyState != types.KeyStatePendingDeletion || *sd.PendingWindowInDays != 7 || time.Until(*sd.DeletionDate) < 6*24*time.Hour {
		t.Fatalf("ScheduleKeyDeletion: %v %+v", err, sd)
	}
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ecx})
	wantAWSErr(t, "Decrypt under a key pending deletion", err, "KMSInvalidStateException", 400)
	if d, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(id)}); err != nil || d.KeyMetadata.KeyState != types.KeyStatePendingDeletion || d.KeyMetadata.DeletionDate == nil {
		t.Fatalf("DescribeKey of a key pending deletion: %v", err)
	}
	if _, err := c.CancelKeyDeletion(ctx, &awskms.CancelKeyDeletionInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("CancelKeyDeletion: %v", err)
	}
	if _, err := c.EnableKey(ctx, &awskms.EnableKeyInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("EnableKey: %v", err)
	}
	if _, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: pt}); err != nil {
		t.Fatalf("Encrypt after EnableKey: %v", err)
	}

	// Refused actions and fields.
	_, err = c.GetKeyPolicy(ctx, &awskms.GetKeyPolicyInput{KeyId: aws.String(id), PolicyName: aws.String("default")})
	wantAWSErr(t, "GetKeyPolicy", err, "UnsupportedOperationException", 400)
	_, err = c.CreateGrant(ctx, &awskms.CreateGrantInput{KeyId: aws.String(id), GranteePrincipal: aws.String("x"), Operations: []types.GrantOperation{types.GrantOperationDecrypt}})
	wantAWSErr(t, "CreateGrant", err, "UnsupportedOperationException", 400)
	_, err = c.PutKeyPolicy(ctx, &awskms.PutKeyPolicyInput{KeyId: aws.String(id), Policy: aws.String("{}")})
	wantAWSErr(t, "PutKeyPolicy", err, "UnsupportedOperationException", 400)
	_, err = c.Sign(ctx, &awskms.SignInput{KeyId: aws.String(id), Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantAWSErr(t, "Sign with a symmetric key", err, "InvalidKeyUsageException", 400)
	_, err = c.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: types.KeySpecRsa4096, KeyUsage: types.KeyUsageTypeSignVerify})
	wantAWSErr(t, "CreateKey of an RSA_4096 key", err, "UnsupportedOperationException", 400)
	_, err = c.UpdateKeyDescription(ctx, &awskms.UpdateKeyDescriptionInput{KeyId: aws.String(id), Description: aws.String("d")})
	wantAWSErr(t, "an action not served", err, "UnknownOperationException", 400)
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(id), Plaintext: make([]byte, 4097)})
	wantAWSErr(t, "Encrypt of 4097 bytes", err, "ValidationException", 400)

	// The audit trail records the AWS actions like the others: protocol
	// aws, the action, the key, the caller and the __type (0: served).
	enc0 := auditedAWS(t, data, "Encrypt", "0")
	if len(enc0) < 2 || enc0[0]["keyId"] != id || enc0[0]["secretId"] != adminID {
		t.Fatalf("audited AWS Encrypts: %v", enc0)
	}
	for _, w := range []struct{ action, code string }{
		{"CreateKey", "0"}, {"CreateAlias", "0"}, {"UpdateAlias", "0"}, {"DeleteAlias", "0"}, {"ScheduleKeyDeletion", "0"},
		{"Decrypt", "IncorrectKeyException"}, {"Encrypt", "DisabledException"}, {"GetKeyPolicy", "UnsupportedOperationException"},
		{"UpdateKeyDescription", "UnknownOperationException"},
	} {
		if len(auditedAWS(t, data, w.action, w.code)) == 0 {
			t.Errorf("no audit line of the AWS %s answered %s", w.action, w.code)
		}
	}
}

// TestAWSPolicies: the AWS actions are authorised by the credential's
// policy, with the AWS-only actions under their own names.
func TestAWSPolicies(t *testing.T) {
	s, _ := newAWSServer(t)
	ctx := context.Background()
	admin := awsClient(s, adminID, adminKey)
	ck, err := admin.CreateKey(ctx, &awskms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	id := *ck.KeyMetadata.KeyId
	if _, err := admin.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/sops"), TargetKeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	// The least privilege of an envelope encryption client (SOPS): two
	// actions on one key.
	sops := s.sdkCred(t, adminID, adminKey).create("aws-sops", `{"effect":"allow","action":["kms:Encrypt","kms:Decrypt"],"resource":"`+id+`"}`)
	c := awsClient(s, sops.id, sops.key)
	ecx := map[string]string{"file": "secrets.yaml"}
	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String("alias/sops"), Plaintext: []byte("data key"), EncryptionContext: ecx})
	if err != nil {
		t.Fatalf("Encrypt with kms:Encrypt: %v", err)
	}
	if _, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ecx}); err != nil {
		t.Fatalf("Decrypt with kms:Decrypt: %v", err)
	}
	for name, call := range map[string]func() error{
		"GenerateDataKey": func() error {
			_, err := c.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: aws.String(id), KeySpec: types.DataKeySpecAes256})
			return err
		},
		"GenerateDataKeyWithoutPlaintext": func() error {
			_, err := c.GenerateDataKeyWithoutPlaintext(ctx, &awskms.GenerateDataKeyWithoutPlaintextInput{KeyId: aws.String(id), KeySpec: types.DataKeySpecAes256})
			return err
		},
		"DescribeKey": func() error {
			_, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(id)})
			return err
		},
		"ListAliases": func() error { _, err := c.ListAliases(ctx, &awskms.ListAliasesInput{}); return err },
		"DeleteAlias": func() error {
			_, err := c.DeleteAlias(ctx, &awskms.DeleteAliasInput{AliasName: aws.String("alias/sops")})
			return err
		},
		"CreateKey": func() error { _, err := c.CreateKey(ctx, &awskms.CreateKeyInput{}); return err },
	} {
		wantAWSErr(t, name+" without its policy action", call(), "AccessDeniedException", 400)
	}
	// kms:ScheduleKeyDeletion alone does not delete an Enabled key: that
	// takes kms:DisableKey too, as through the Tencent APIs.
	sched := s.sdkCred(t, adminID, adminKey).create("aws-sched", `{"effect":"allow","action":["kms:ScheduleKeyDeletion"],"resource":"`+id+`"}`)
	_, err = awsClient(s, sched.id, sched.key).ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: aws.String(id)})
	wantAWSErr(t, "ScheduleKeyDeletion of an Enabled key with kms:ScheduleKeyDeletion only", err, "AccessDeniedException", 400)
	// An alias name resolves before the policy is checked on its key: a
	// name no key holds is NotFound, one on a key outside the policy
	// AccessDenied (as with AWS KMS).
	_, err = c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("alias/none")})
	wantAWSErr(t, "DescribeKey of an alias no key holds", err, "NotFoundException", 400)
	_, err = c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("alias/sops")})
	wantAWSErr(t, "DescribeKey of an alias outside the policy", err, "AccessDeniedException", 400)
	// kms:GenerateDataKeyWithoutPlaintext is its own action.
	wo := s.sdkCred(t, adminID, adminKey).create("aws-wo", `{"effect":"allow","action":["kms:GenerateDataKeyWithoutPlaintext"],"resource":"`+id+`"}`)
	cw := awsClient(s, wo.id, wo.key)
	if _, err := cw.GenerateDataKeyWithoutPlaintext(ctx, &awskms.GenerateDataKeyWithoutPlaintextInput{KeyId: aws.String(id), KeySpec: types.DataKeySpecAes256}); err != nil {
		t.Fatalf("GenerateDataKeyWithoutPlaintext with its action: %v", err)
	}
	_, err = cw.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: aws.String(id), KeySpec: types.DataKeySpecAes256})
	wantAWSErr(t, "GenerateDataKey with kms:GenerateDataKeyWithoutPlaintext only", err, "AccessDeniedException", 400)
}

// TestAWSCrossProtocol: a blob made through one protocol decrypts through
// the other with the same encryption context, both ways.
func TestAWSCrossProtocol(t *testing.T) {
	s, _ := newAWSServer(t)
	ctx := context.Background()
	c := awsClient(s, adminID, adminKey)
	tc := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	ck := tckms.NewCreateKeyRequest()
	ck.Alias = common.StringPtr("cross")
	created, err := tc.CreateKey(ck)
	if err != nil {
		t.Fatal(err)
	}
	id := *created.Response.KeyId
	pt := []byte(secret("crossing protocols, both ways"))

	// AWS -> Tencent. The AWS alias alias/cross is the Tencent alias cross.
	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String("alias/cross"), Plaintext: pt, EncryptionContext: map[string]string{"b": "2", "a": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	dec := tckms.NewDecryptRequest()
	dec.CiphertextBlob = common.StringPtr(base64.StdEncoding.EncodeToString(enc.CiphertextBlob))
	dec.EncryptionContext = common.StringPtr(`{"a":"1","b":"2"}`)
	dr, err := tc.Decrypt(dec)
	if err != nil {
		t.Fatalf("Tencent Decrypt of an AWS blob: %v", err)
	}
	if got, _ := base64.StdEncoding.DecodeString(*dr.Response.Plaintext); !bytes.Equal(got, pt) || *dr.Response.KeyId != id {
		t.Fatal("Tencent Decrypt of an AWS blob: wrong plaintext or key")
	}
	dec.EncryptionContext = common.StringPtr(`{"a":"1"}`)
	if _, err := tc.Decrypt(dec); err == nil {
		t.Fatal("Tencent Decrypt of an AWS blob with another context succeeded")
	}

	// Tencent -> AWS.
	te := tckms.NewEncryptRequest()
	te.KeyId = common.StringPtr(id)
	te.Plaintext = common.StringPtr(base64.StdEncoding.EncodeToString(pt))
	te.EncryptionContext = common.StringPtr(`{"tenant":"42","app":"x"}`)
	er, err := tc.Encrypt(te)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := base64.StdEncoding.DecodeString(*er.Response.CiphertextBlob)
	if err != nil {
		t.Fatal(err)
	}
	d, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: blob, KeyId: aws.String("alias/cross"), EncryptionContext: map[string]string{"app": "x", "tenant": "42"}})
	if err != nil || !bytes.Equal(d.Plaintext, pt) {
		t.Fatalf("AWS Decrypt of a Tencent blob: %v", err)
	}
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: blob, EncryptionContext: map[string]string{"app": "x"}})
	wantAWSErr(t, "AWS Decrypt of a Tencent blob with another context", err, "InvalidCiphertextException", 400)
}

// signedAWSRequest returns a request for action with body, signed by the
// AWS SDK's v4 signer as the SDK signs (service kms), after edit has
// changed it; tamper then changes it after signing.
func signedAWSRequest(t *testing.T, s *server, id, key, region, service, action, body string, at time.Time, edit, tamper func(*http.Request)) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.url+"/", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService."+action)
	if edit != nil {
		edit(req)
	}
	sum := sha256.Sum256([]byte(body))
	err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: id, SecretAccessKey: key}, req, hex.EncodeToString(sum[:]), service, region, at)
	if err != nil {
		t.Fatal(err)
	}
	if tamper != nil {
		tamper(req)
	}
	return req
}

func sendAWS(t *testing.T, req *http.Request) (status int, typ, msg string, raw []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ = io.ReadAll(resp.Body)
	if resp.Header.Get("X-Amzn-RequestId") == "" {
		t.Errorf("no x-amzn-RequestId in the reply")
	}
	var e struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}
	_ = json.Unmarshal(raw, &e)
	return resp.StatusCode, e.Type, e.Message, raw
}

// TestAWSSigV4 sends requests signed by the AWS SDK's v4 signer, then
// broken in each way a verifier must catch.
func TestAWSSigV4(t *testing.T) {
	s, data := newAWSServer(t, "KMSD_REFUSAL_AUDIT_INTERVAL=1s")
	body := `{"NumberOfBytes":16}`
	now := time.Now()
	ok := signedAWSRequest(t, s, adminID, adminKey, awsRegion, "kms", "GenerateRandom", body, now, nil, nil)
	if st, typ, msg, raw := sendAWS(t, ok); st != 200 || typ != "" {
		t.Fatalf("a correctly signed request: %d %s %s %s", st, typ, msg, raw)
	}
	for _, tc := range []struct {
		name         string
		id, key      string
		region, svc  string
		action, body string
		at           time.Time
		edit, tamper func(*http.Request)
		status       int
		typ, inMsg   string
	}{
		{name: "wrong secret", key: "wrong" + adminKey, status: 400, typ: "InvalidSignatureException"},
		{name: "unknown access key id", id: "AKIDnobody", status: 400, typ: "UnrecognizedClientException"},
		{name: "expired date", at: now.Add(-6 * time.Minute), status: 400, typ: "InvalidSignatureException", inMsg: "Signature expired"},
		{name: "date in the future", at: now.Add(6 * time.Minute), status: 400, typ: "InvalidSignatureException", inMsg: "Signature expired"},
		{name: "region not served", region: "ap-south-1", status: 400, typ: "InvalidSignatureException", inMsg: "region"},
		{name: "another service", svc: "s3", status: 400, typ: "InvalidSignatureException", inMsg: "'kms'"},
		{name: "tampered body", tamper: func(r *http.Request) {
			b := `{"NumberOfBytes":17}`
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader(b)), int64(len(b))
		}, status: 400, typ: "InvalidSignatureException"},
		{name: "action changed after signing", tamper: func(r *http.Request) { r.Header.Set("X-Amz-Target", "TrentService.GenerateDataKey") }, status: 400, typ: "InvalidSignatureException"},
		{name: "X-Amz-Target not signed", tamper: func(r *http.Request) {
			a := r.Header.Get("Authorization")
			r.Header.Set("Authorization", strings.Replace(a, ";x-amz-target", "", 1))
		}, status: 400, typ: "InvalidSignatureException", inMsg: "x-amz-target"},
		{name: "security token", edit: func(r *http.Request) { r.Header.Set("X-Amz-Security-Token", "token") }, status: 400, typ: "UnrecognizedClientException", inMsg: "temporary credentials"},
		{name: "unsigned payload", edit: func(r *http.Request) { r.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD") }, status: 400, typ: "InvalidSignatureException", inMsg: "X-Amz-Content-Sha256"},
		{name: "no signature", tamper: func(r *http.Request) { r.Header.Del("Authorization") }, status: 403, typ: "MissingAuthenticationTokenException"},
		{name: "malformed Authorization", tamper: func(r *http.Request) { r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=x") }, status: 400, typ: "IncompleteSignatureException"},
		{name: "wrong content type", edit: func(r *http.Request) { r.Header.Set("Content-Type", "application/json") }, status: 400, typ: "SerializationException"},
		{name: "malformed JSON", body: `{"NumberOfBytes":`, status: 400, typ: "SerializationException"},
		{name: "unknown field", body: `{"NumberOfBytes":1,"Bogus":1}`, status: 400, typ: "ValidationException"},
		{name: "unknown action", action: "Bogus", status: 400, typ: "UnknownOperationException"},
		{name: "not KMS's target", tamper: nil, edit: func(r *http.Request) { r.Header.Set("X-Amz-Target", "DynamoDB_20120810.ListTables") }, status: 400, typ: "UnknownOperationException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, key, region, svc, action, body, at := adminID, adminKey, awsRegion, "kms", "GenerateRandom", body, now
			if tc.id != "" {
				id = tc.id
			}
			if tc.key != "" {
				key = tc.key
			}
			if tc.region != "" {
				region = tc.region
			}
			if tc.svc != "" {
				svc = tc.svc
			}
			if tc.action != "" {
				action = tc.action
			}
			if tc.body != "" {
				body = tc.body
			}
			if !tc.at.IsZero() {
				at = tc.at
			}
			st, typ, msg, raw := sendAWS(t, signedAWSRequest(t, s, id, key, region, svc, action, body, at, tc.edit, tc.tamper))
			if st != tc.status || typ != tc.typ || !strings.Contains(msg, tc.inMsg) {
				t.Fatalf("got %d %s %q, want %d %s containing %q (%s)", st, typ, msg, tc.status, tc.typ, tc.inMsg, raw)
			}
		})
	}
	// Refused authentications are summarised in the audit trail.
	within(t, 15*time.Second, "AWS refusals in the audit trail", func() bool {
		return len(auditedAWS(t, data, "", "InvalidSignatureException")) > 0 && len(auditedAWS(t, data, "", "UnrecognizedClientException")) > 0
	})
}
