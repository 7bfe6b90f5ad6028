// Command kms-plugin is a Kubernetes KMS v2 plugin backed by kmsd: it
// serves the KMS v2 gRPC API (k8s.io/kms) on a unix socket for
// kube-apiserver, and seals and opens the apiserver's data encryption keys
// with one CMK of kmsd, whose key material stays in the HSM.
//
//	kms-plugin -socket /var/run/hsmkms/kms-plugin.sock -endpoint https://kmsd:8443 \
//	    -key-id CMK -credential-file FILE [-ca-file CA] [-cert-file C -key-file K]
//
// It runs on every control-plane host, next to kube-apiserver; kmsd runs
// near the HSM. Each Encrypt, Decrypt and Status is one or two API 3.0
// calls to kmsd (kmsclient), signed with a credential whose policy should
// allow only kms:Encrypt, kms:Decrypt and kms:DescribeKey on that CMK.
// The credential is read from -credential-file (the two lines
// TENCENTCLOUD_SECRET_ID=... and TENCENTCLOUD_SECRET_KEY=... that kmsctl
// credentials create prints) or from those environment variables.
//
// SIGTERM or SIGINT stops it gracefully: it stops accepting, lets calls in
// flight finish (at most -shutdown-grace), and removes its socket.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"
	"k8s.io/kms/pkg/service"

	"hsmkms/kmsclient"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "kms-plugin:", err)
		}
		os.Exit(1)
	}
}

// options are the plugin's settings.
type options struct {
	socket, endpoint, keyID       string
	credFile                      string
	caFile, certFile, keyFile     string
	timeout, statusTTL, statusMax time.Duration
	grace                         time.Duration
	debug                         bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("kms-plugin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := os.Getenv("KMS_ENDPOINT")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	fs.StringVar(&o.socket, "socket", "/var/run/hsmkms/kms-plugin.sock", "unix socket to serve the KMS v2 API on (a path or unix:///path); made with mode 0600")
	fs.StringVar(&o.endpoint, "endpoint", def, "kmsd base URL (env KMS_ENDPOINT)")
	fs.StringVar(&o.keyID, "key-id", os.Getenv("KMS_PLUGIN_KEY_ID"), "id of the CMK that seals the apiserver's keys (env KMS_PLUGIN_KEY_ID)")
	fs.StringVar(&o.credFile, "credential-file", "", "file with TENCENTCLOUD_SECRET_ID=... and TENCENTCLOUD_SECRET_KEY=... lines (default: those environment variables)")
	fs.StringVar(&o.caFile, "ca-file", "", "CA certificate(s) (PEM) that signed kmsd's TLS certificate (default: the system roots)")
	fs.StringVar(&o.certFile, "cert-file", "", "client certificate (PEM) for mTLS")
	fs.StringVar(&o.keyFile, "key-file", "", "client certificate's private key (PEM) for mTLS")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "longest kmsd call of an Encrypt or Decrypt (the apiserver's own deadline applies first)")
	fs.DurationVar(&o.statusTTL, "status-cache", 5*time.Second, "how long a Status result is reused")
	fs.DurationVar(&o.statusMax, "status-timeout", 3*time.Second, "longest Status probe of kmsd")
	fs.DurationVar(&o.grace, "shutdown-grace", 10*time.Second, "on SIGTERM, how long calls in flight may take to finish")
	fs.BoolVar(&o.debug, "debug", false, "log every call (never its data)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.keyID == "":
		return o, errors.New("-key-id is required")
	case o.timeout <= 0 || o.statusTTL < 0 || o.statusMax <= 0 || o.grace < 0:
		return o, errors.New("-timeout and -status-timeout must be positive, -status-cache and -shutdown-grace not negative")
	}
	return o, nil
}

// readCredential returns the SecretId and SecretKey from file (KEY=VALUE
// lines; blank lines and # comments are ignored), or from the environment
// when file is "".
func readCredential(file string) (id, key string, err error) {
	if file == "" {
		id, key = os.Getenv("TENCENTCLOUD_SECRET_ID"), os.Getenv("TENCENTCLOUD_SECRET_KEY")
	} else {
		f, err := os.Open(file)
		if err != nil {
			return "", "", fmt.Errorf("credential file: %w", err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			k, v, ok := strings.Cut(line, "=")
			switch {
			case line == "" || strings.HasPrefix(line, "#"):
			case ok && k == "TENCENTCLOUD_SECRET_ID":
				id = v
			case ok && k == "TENCENTCLOUD_SECRET_KEY":
				key = v
			default:
				return "", "", fmt.Errorf("credential file %s: unexpected line (want TENCENTCLOUD_SECRET_ID=... and TENCENTCLOUD_SECRET_KEY=...)", file)
			}
		}
		if err := sc.Err(); err != nil {
			return "", "", fmt.Errorf("credential file: %w", err)
		}
	}
	if id == "" || key == "" {
		return "", "", errors.New("no credential: give -credential-file or set TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY")
	}
	return id, key, nil
}

// run serves until ctx ends, then stops gracefully. ready, if not nil,
// receives the socket path once the plugin accepts calls.
func run(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if o.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	path, err := socketPath(o.socket)
	if err != nil {
		return err
	}
	id, key, err := readCredential(o.credFile)
	if err != nil {
		return err
	}
	tc, err := kmsclient.LoadTLS(o.caFile, o.certFile, o.keyFile)
	if err != nil {
		return err
	}
	kc, err := kmsclient.New(kmsclient.Config{Endpoint: o.endpoint, SecretID: id, SecretKey: key, TLS: tc, Timeout: o.timeout})
	if err != nil {
		return err
	}
	defer kc.CloseIdleConnections()
	p := &plugin{kmsd: kc, keyID: o.keyID, callTimeout: o.timeout, log: log,
		status: statusCache{ttl: o.statusTTL, timeout: o.statusMax}}

	ln, err := listenUnix(path)
	if err != nil {
		return err
	}
	defer ln.remove()
	gs := grpc.NewServer()
	// The helper of k8s.io/kms adapts the Service to the gRPC API; the
	// listener is ours (mode 0600, stale socket handling).
	kmsapi.RegisterKeyManagementServiceServer(gs, service.NewGRPCService(path, o.timeout, p))
	served := make(chan error, 1)
	go func() { served <- gs.Serve(ln) }()
	log.Info("listening", "socket", path, "kmsd", kc.Endpoint(), "key_id", o.keyID)
	if ready != nil {
		ready <- path
	}
	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.Info("stopping: finishing calls in flight", "grace", o.grace.String())
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(o.grace):
		log.Warn("calls still in flight after the grace period; closing them")
		gs.Stop()
		<-stopped
	}
	log.Info("stopped")
	return nil
}
