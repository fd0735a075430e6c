// Command loadgen drives many small-file PUTs or GETs against one WebDAV
// collection and prints a JSON summary on stdout.
//
// Each client is a goroutine that owns one TCP connection and speaks HTTP/1.1
// on it directly: it writes a pre-formatted request and parses the response
// with http.ReadResponse (so Content-Length, chunked bodies and
// "Connection: close" are all handled). That costs far less CPU per request
// than http.Client, whose Transport adds two goroutines and channel hand-offs
// per connection; on a 2-core machine every microsecond the generator spends
// is taken from the server under test. A connection is only reopened when the
// server closes it; "connections" in the output counts the dials and equals
// -c when every server kept its connections alive.
//
// Clients pull file indices from a shared counter, so one slow request does
// not leave the other connections idle at the end of the run.
//
// It is used by bench/storage.py, which also measures two Python generators
// against nginx and reports all three as the generator ceiling.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type summary struct {
	Method      string         `json:"method"`
	Files       int            `json:"files"`
	Size        int            `json:"size"`
	Clients     int            `json:"clients"`
	OK          int            `json:"ok"`
	Errors      int            `json:"errors"`
	Seconds     float64        `json:"seconds"`
	FilesPerS   float64        `json:"files_per_s"`
	Connections int64          `json:"connections"`
	Status      map[string]int `json:"status"`
	FirstError  string         `json:"first_error,omitempty"`
}

type workerResult struct {
	ok, errors int
	status     map[string]int
	firstError string
}

type client struct {
	addr    string
	host    string
	auth    string
	timeout time.Duration
	conn    net.Conn
	br      *bufio.Reader
	wbuf    []byte
	dials   *atomic.Int64
}

func (c *client) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// do sends one request and returns the status and the number of body bytes read.
func (c *client) do(method, path string, body []byte, discard []byte) (int, int64, error) {
	if c.conn == nil {
		conn, err := net.DialTimeout("tcp", c.addr, 10*time.Second)
		if err != nil {
			return 0, 0, err
		}
		c.dials.Add(1)
		c.conn = conn
		c.br = bufio.NewReaderSize(conn, 64*1024)
	}
	if err := c.conn.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		c.close()
		return 0, 0, err
	}
	w := c.wbuf[:0]
	w = append(w, method...)
	w = append(w, ' ')
	w = append(w, path...)
	w = append(w, " HTTP/1.1\r\nHost: "...)
	w = append(w, c.host...)
	if c.auth != "" {
		w = append(w, "\r\nAuthorization: "...)
		w = append(w, c.auth...)
	}
	if method == "PUT" {
		w = append(w, "\r\nContent-Type: application/octet-stream\r\nContent-Length: "...)
		w = strconv.AppendInt(w, int64(len(body)), 10)
	}
	w = append(w, "\r\n\r\n"...)
	w = append(w, body...)
	c.wbuf = w
	if _, err := c.conn.Write(w); err != nil {
		c.close()
		return 0, 0, err
	}
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		c.close()
		return 0, 0, err
	}
	n, err := io.CopyBuffer(io.Discard, resp.Body, discard)
	resp.Body.Close()
	if err != nil || resp.Close {
		c.close()
	}
	return resp.StatusCode, n, err
}

func main() {
	base := flag.String("base", "", "collection URL the files live in, e.g. http://127.0.0.1:8080/small")
	method := flag.String("method", "PUT", "PUT or GET")
	files := flag.Int("n", 5000, "number of files")
	size := flag.Int("size", 4096, "bytes per file")
	clients := flag.Int("c", 16, "parallel clients (one connection each)")
	user := flag.String("user", "", "HTTP Basic user (empty: no Authorization header)")
	password := flag.String("password", "", "HTTP Basic password")
	timeout := flag.Duration("timeout", 60*time.Second, "per-request timeout")
	flag.Parse()
	u, err := url.Parse(*base)
	if err != nil || u.Scheme != "http" || u.Host == "" || (*method != "PUT" && *method != "GET") ||
		*files < 1 || *clients < 1 {
		flag.Usage()
		os.Exit(2)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	auth := ""
	if *user != "" {
		auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(*user+":"+*password))
	}

	var body []byte
	if *method == "PUT" {
		body = make([]byte, *size)
		if _, err := rand.Read(body); err != nil {
			fmt.Fprintln(os.Stderr, "random body:", err)
			os.Exit(1)
		}
	}
	prefix := u.EscapedPath()
	paths := make([]string, *files)
	for i := range paths {
		paths[i] = prefix + "/f" + strconv.Itoa(i)
	}

	var dials atomic.Int64
	var next atomic.Int64
	results := make([]workerResult, *clients)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := &client{addr: addr, host: u.Host, auth: auth, timeout: *timeout, dials: &dials,
				wbuf: make([]byte, 0, 1024+len(body))}
			defer c.close()
			discard := make([]byte, 64*1024)
			res := workerResult{status: map[string]int{}}
			fail := func(msg string) {
				res.errors++
				if res.firstError == "" {
					res.firstError = msg
				}
			}
			for {
				i := int(next.Add(1) - 1)
				if i >= *files {
					break
				}
				status, n, err := c.do(*method, paths[i], body, discard)
				if status != 0 {
					res.status[strconv.Itoa(status)]++
				}
				switch {
				case err != nil:
					fail(fmt.Sprintf("%s %s: %v", *method, paths[i], err))
				case *method == "PUT" && status != 201 && status != 204:
					fail(fmt.Sprintf("PUT %s: status %d", paths[i], status))
				case *method == "GET" && (status != 200 || n != int64(*size)):
					fail(fmt.Sprintf("GET %s: status %d, %d bytes", paths[i], status, n))
				default:
					res.ok++
				}
			}
			results[w] = res
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	out := summary{
		Method: *method, Files: *files, Size: *size, Clients: *clients,
		Seconds: elapsed, Connections: dials.Load(), Status: map[string]int{},
	}
	for _, r := range results {
		out.OK += r.ok
		out.Errors += r.errors
		for k, v := range r.status {
			out.Status[k] += v
		}
		if out.FirstError == "" {
			out.FirstError = r.firstError
		}
	}
	if elapsed > 0 {
		out.FilesPerS = float64(out.OK) / elapsed
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
