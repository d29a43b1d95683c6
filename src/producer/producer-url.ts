// Where a gateway's producer API is, from the gateway's base URL.

/** The producer API's URL under a gateway's base URL, keeping a path prefix the gateway is
 * served under (http://host/jobwire -> http://host/jobwire/jobs/<id>/progress). */
export function producerUrl(gateway: string, jobId: string): URL {
  const url = new URL(gateway)
  url.pathname = `${url.pathname.replace(/\/+$/, '')}/jobs/${encodeURIComponent(jobId)}/progress`
  url.search = ''
  return url
}
