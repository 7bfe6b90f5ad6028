package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// The AWS KMS API cell: Encrypt with the same key, plaintext size and
// encryption context as the API 3.0 Encrypt cell, signed with the AWS SDK
// for Go v2's own v4 signer (SigV4 signs no nonce either, so a pool of
// signed requests is re-sent, and re-signed every minute like the TC3
// pools).

// awsBenchRegion is the region kmsd serves the AWS API in, for the bench.
const awsBenchRegion = "us-east-1"

// awsBenchContext is benchContext as the AWS API sends it (a JSON object).
var awsBenchContext = json.RawMessage(benchContext)

// signAWS signs req, whose body is body, at ts with the AWS SDK's v4
// signer, as the AWS SDKs sign a KMS request.
func signAWS(req *http.Request, action string, body []byte, ts int64) {
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService."+action)
	sum := sha256.Sum256(body)
	err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: secretID, SecretAccessKey: secretKey},
		req, hex.EncodeToString(sum[:]), "kms", awsBenchRegion, time.Unix(ts, 0))
	if err != nil {
		panic(err) // the signer fails only on a nil request or credentials
	}
}

// awsRequest returns the raw bytes of an AWS KMS API POST of action with
// body, signed at ts.
func awsRequest(host, action string, body []byte, ts int64) []byte {
	req, _ := http.NewRequest(http.MethodPost, "http://"+host+"/", bytes.NewReader(body))
	signAWS(req, action, body, ts)
	var b bytes.Buffer
	b.Grow(len(body) + 768)
	fmt.Fprintf(&b, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", host, len(body))
	for _, h := range []string{"Content-Type", "X-Amz-Target", "X-Amz-Date", "Authorization"} {
		fmt.Fprintf(&b, "%s: %s\r\n", h, req.Header.Get(h))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// awsCall sends one AWS API request (set-up only, not timed) and returns
// the decoded reply.
func awsCall(host, action string, params any) (map[string]any, error) {
	body, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+host+"/", bytes.NewReader(body))
	signAWS(req, action, body, time.Now().Unix())
	resp, err := setupClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil || resp.StatusCode != 200 {
		return nil, fmt.Errorf("AWS %s: HTTP %d: %.300s", action, resp.StatusCode, out)
	}
	return m, nil
}

// awsEncryptOp is the aws-encrypt operation, or why it is not available.
func awsEncryptOp(host, keyID string, size int) (opSpec, *tc3Pool) {
	op := opSpec{name: "aws-encrypt"}
	var bodies [][]byte
	for range 64 {
		b, _ := json.Marshal(map[string]any{"KeyId": keyID, "Plaintext": randomB64(size), "EncryptionContext": awsBenchContext})
		bodies = append(bodies, b)
	}
	var p map[string]any
	_ = json.Unmarshal(bodies[0], &p)
	if _, err := awsCall(host, "Encrypt", p); err != nil {
		op.avail = err.Error()
		return op, nil
	}
	pool := newSignedPool(host, "Encrypt", bodies, awsRequest)
	op.src = func(w int) source { return &awsPoolSource{poolSource{p: pool}} }
	return op, pool
}

// awsPoolSource is a poolSource of AWS requests: a reply is an error when
// it carries an AWS error type.
type awsPoolSource struct{ poolSource }

func (s *awsPoolSource) ok(body []byte) bool { return !bytes.Contains(body, []byte(`"__type"`)) }
